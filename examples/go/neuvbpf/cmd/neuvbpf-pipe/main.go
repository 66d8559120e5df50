// Command neuvbpf-pipe runs one pipe operation of package neuvbpf against
// `neuv-bpf serve`, the way NeuVector's agent would call its pipe driver:
//
//	neuvbpf-pipe [-socket PATH] attach VIN VEX MAC   # prints {"id","ucmac","bcmac"}
//	neuvbpf-pipe [-socket PATH] tap|fwd|reset|detach VIN VEX
//	neuvbpf-pipe [-socket PATH] health|pairs         # prints the JSON answer
//
// A refused call: its one-line message on stderr and exit 1.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"

	"neuv-bpf/examples/go/neuvbpf"
)

func main() {
	socket := flag.String("socket", neuvbpf.DefaultSocket, "the service's unix socket")
	flag.Parse()
	args := flag.Args()
	if err := run(neuvbpf.New(*socket), args); err != nil {
		fmt.Fprintln(os.Stderr, "neuvbpf-pipe:", err)
		os.Exit(1)
	}
}

func printJSON(v interface{}) error {
	return json.NewEncoder(os.Stdout).Encode(v)
}

func run(d *neuvbpf.Driver, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: neuvbpf-pipe [-socket PATH] attach VIN VEX MAC | tap|fwd|reset|detach VIN VEX | health | pairs")
	}
	switch args[0] {
	case "health":
		h, err := d.Health()
		if err != nil {
			return err
		}
		return printJSON(h)
	case "pairs":
		ps, err := d.Pairs()
		if err != nil {
			return err
		}
		return printJSON(ps)
	}
	if len(args) < 3 {
		return fmt.Errorf("%s needs VIN VEX", args[0])
	}
	pair := &neuvbpf.InterceptPair{InPort: args[1], ExPort: args[2]}
	switch args[0] {
	case "attach":
		if len(args) != 4 {
			return fmt.Errorf("attach needs VIN VEX MAC")
		}
		mac, err := net.ParseMAC(args[3])
		if err != nil {
			return err
		}
		pair.MAC = mac
		if _, _, err := d.AttachPortPair(pair); err != nil {
			return err
		}
		return printJSON(map[string]interface{}{"id": pair.ID, "ucmac": pair.UCMAC.String(), "bcmac": pair.BCMAC.String()})
	case "tap":
		return d.TapPortPair(0, pair)
	case "fwd":
		return d.FwdPortPair(0, pair)
	case "reset":
		return d.ResetPortPair(0, pair)
	case "detach":
		return d.DetachPortPair(pair)
	}
	return fmt.Errorf("unknown operation %q", args[0])
}
