package neuvbpf

import (
	"errors"
	"net"
	"os"
	"testing"
)

// TestPipeOperations runs every operation against a live `neuv-bpf serve`:
// test/goclient.test.ts sets NEUVBPF_SOCKET and a vin/vex pair of its
// topology (NEUVBPF_IN, NEUVBPF_EX, NEUVBPF_MAC). Skipped without them.
func TestPipeOperations(t *testing.T) {
	socket, in, ex, macS := os.Getenv("NEUVBPF_SOCKET"), os.Getenv("NEUVBPF_IN"), os.Getenv("NEUVBPF_EX"), os.Getenv("NEUVBPF_MAC")
	if socket == "" {
		t.Skip("NEUVBPF_SOCKET not set: run by test/goclient.test.ts against a live neuv-bpf serve")
	}
	mac, err := net.ParseMAC(macS)
	if err != nil {
		t.Fatal(err)
	}
	d := New(socket)
	h, err := d.Health()
	if err != nil || h.Status != "ok" {
		t.Fatalf("health: %v %+v", err, h)
	}
	pair := &InterceptPair{Port: "eth0", InPort: in, ExPort: ex, MAC: mac}
	uc, bc, err := d.AttachPortPair(pair)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	if uc[0] != 0x4e || uc[4] != byte(pair.ID>>8) || uc[5] != byte(pair.ID) || bc[0] != 0xff || bc[5] != byte(pair.ID) {
		t.Fatalf("ucmac %s bcmac %s for id %d", uc, bc, pair.ID)
	}
	if _, _, err := d.AttachPortPair(pair); err != nil {
		t.Fatalf("attaching the same pair again: %v", err)
	}
	mode := func() string {
		ps, err := d.Pairs()
		if err != nil {
			t.Fatalf("pairs: %v", err)
		}
		for _, p := range ps {
			if p.ID == pair.ID && p.Mode != nil {
				return *p.Mode
			}
		}
		return "gone"
	}
	if m := mode(); m != "bypass" {
		t.Fatalf("after attach: %s", m)
	}
	for _, step := range []struct {
		op   func(int, *InterceptPair) error
		want string
	}{{d.TapPortPair, "tap"}, {d.FwdPortPair, "fwd"}, {d.ResetPortPair, "bypass"}} {
		if err := step.op(0, pair); err != nil {
			t.Fatalf("%s: %v", step.want, err)
		}
		if m := mode(); m != step.want {
			t.Fatalf("want %s, the service shows %s", step.want, m)
		}
	}
	if err := d.DetachPortPair(pair); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if m := mode(); m != "gone" {
		t.Fatalf("after detach: %s", m)
	}
	// A refusal: the service's error class and status.
	var e *Error
	if err := d.FwdPortPair(0, pair); !errors.As(err, &e) || e.Status != 404 || e.Code != 4 {
		t.Fatalf("fwd of a detached pair: %v", err)
	}
	pair.MAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if _, _, err := d.AttachPortPair(pair); !errors.As(err, &e) || e.Status != 400 || e.Code != 2 {
		t.Fatalf("attach with a broadcast MAC: %v", err)
	}
	if _, err := New(socket + ".none").Health(); err == nil {
		t.Fatal("no service there, yet an answer")
	}
}
