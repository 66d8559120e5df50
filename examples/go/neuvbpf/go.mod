module neuv-bpf/examples/go/neuvbpf

go 1.19
