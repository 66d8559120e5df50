// Package neuvbpf drives neuv-bpf's datapath through the API of
// `neuv-bpf serve` (docs/api.md): HTTP/1.1 + JSON on a unix socket.
//
// It is shaped like the pipe driver of NeuVector's agent (agent/pipe:
// AttachPortPair, DetachPortPair, ResetPortPair, TapPortPair, FwdPortPair
// on an InterceptPair), so the agent can switch from its tc driver to
// neuv-bpf by swapping the driver file: each operation is one API call
// instead of a dozen `tc` processes. Standard library only.
//
//	d := neuvbpf.New("/run/neuv-bpf/_sys_fs_bpf_neuv.sock")
//	pair := &neuvbpf.InterceptPair{InPort: "vin1a2b-eth0", ExPort: "vex1a2b-eth0", MAC: mac}
//	ucmac, bcmac, err := d.AttachPortPair(pair) // the pair is in bypass
//	err = d.TapPortPair(pid, pair)
//	err = d.FwdPortPair(pid, pair)
//	err = d.ResetPortPair(pid, pair) // bypass again
//	err = d.DetachPortPair(pair)
package neuvbpf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// DefaultSocket is the socket of a service on the default pin root /sys/fs/bpf/neuv.
const DefaultSocket = "/run/neuv-bpf/_sys_fs_bpf_neuv.sock"

// InterceptPair is one intercepted port as the agent knows it: the vin/vex
// pair in the enforcer netns and the workload's MAC. AttachPortPair fills
// in ID, UCMAC and BCMAC.
type InterceptPair struct {
	Port   string // the container's port (eth0), for the agent's own bookkeeping
	InPort string // vin: the veth whose peer is the workload's port
	ExPort string // vex: the workload's original port
	MAC    net.HardwareAddr
	ID     int
	UCMAC  net.HardwareAddr
	BCMAC  net.HardwareAddr
}

// Error is a call the service refused: Code is the class of neuv-bpf's exit
// codes (2 usage, 4 not found, 5 conflict, ...), Status the HTTP status.
type Error struct {
	Status  int
	Code    int
	Message string
	Call    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("neuv-bpf %s: %s (HTTP %d, code %d)", e.Call, e.Message, e.Status, e.Code)
}

// Driver talks to one service.
type Driver struct {
	Socket string
	client *http.Client
}

// New returns a driver for the service listening on socket. Each call is one
// connection: a unix socket costs microseconds to connect, and no call can
// land on a connection the server is closing.
func New(socket string) *Driver {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	// An intercept can wait up to 120 s for the intercept lock.
	return &Driver{Socket: socket, client: &http.Client{Transport: tr, Timeout: 130 * time.Second}}
}

// call sends one request; out (when not nil) gets the JSON response.
func (d *Driver) call(method, path string, in, out interface{}) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	// The host is ignored: the transport dials the socket.
	req, err := http.NewRequest(method, "http://neuv-bpf"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("neuv-bpf %s %s: cannot reach %s: %w", method, path, d.Socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("neuv-bpf %s %s: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &Error{Status: resp.StatusCode, Code: 1, Message: http.StatusText(resp.StatusCode), Call: method + " " + path}
		var b struct {
			Error string `json:"error"`
			Code  int    `json:"code"`
		}
		if json.Unmarshal(raw, &b) == nil && b.Error != "" {
			e.Message, e.Code = b.Error, b.Code
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("neuv-bpf %s %s: the answer is not the JSON expected: %w", method, path, err)
	}
	return nil
}

// pairPath names the pair by its vin (ports cannot contain ':', so "in:NAME" is never an id).
func pairPath(pair *InterceptPair) string {
	return "/v1/pairs/" + url.PathEscape("in:"+pair.InPort)
}

type pairAdded struct {
	ID    int    `json:"id"`
	UCMAC string `json:"ucmac"`
	BCMAC string `json:"bcmac"`
	Mode  string `json:"mode"`
}

// AttachPortPair puts the programs on the pair's vin and vex and writes its
// entries, in bypass (frames go straight across, as with no pipe rule);
// returns the pair's UCMAC and BCMAC (also set in pair). Attaching the same
// pair again is not an error.
func (d *Driver) AttachPortPair(pair *InterceptPair) (net.HardwareAddr, net.HardwareAddr, error) {
	var r pairAdded
	spec := map[string]string{"in": pair.InPort, "ex": pair.ExPort, "mac": pair.MAC.String()}
	if err := d.call("POST", "/v1/pairs", spec, &r); err != nil {
		return nil, nil, err
	}
	uc, err := net.ParseMAC(r.UCMAC)
	if err != nil {
		return nil, nil, err
	}
	bc, err := net.ParseMAC(r.BCMAC)
	if err != nil {
		return nil, nil, err
	}
	pair.ID, pair.UCMAC, pair.BCMAC = r.ID, uc, bc
	return uc, bc, nil
}

// DetachPortPair removes the pair: its programs and entries (and flows).
func (d *Driver) DetachPortPair(pair *InterceptPair) error {
	return d.call("DELETE", pairPath(pair), nil, nil)
}

func (d *Driver) setMode(pair *InterceptPair, mode string) error {
	return d.call("PUT", pairPath(pair)+"/mode", map[string]string{"mode": mode}, nil)
}

// ResetPortPair takes the pair out of inspection: bypass, frames go straight
// across. pid (the container's, which NeuVector's tc driver needs) is unused.
func (d *Driver) ResetPortPair(pid int, pair *InterceptPair) error {
	return d.setMode(pair, "bypass")
}

// TapPortPair: frames go across and a copy goes to the DP.
func (d *Driver) TapPortPair(pid int, pair *InterceptPair) error {
	return d.setMode(pair, "tap")
}

// FwdPortPair: frames go through the DP (inline, Protect mode).
func (d *Driver) FwdPortPair(pid int, pair *InterceptPair) error {
	return d.setMode(pair, "fwd")
}

// Health is GET /v1/health.
type Health struct {
	Status        string `json:"status"`
	PinRoot       string `json:"pinRoot"`
	Version       string `json:"version"`
	Pid           int    `json:"pid"`
	UptimeSeconds int    `json:"uptimeSeconds"`
}

// Health says whether the service runs and the datapath is loaded.
func (d *Driver) Health() (*Health, error) {
	var h Health
	if err := d.call("GET", "/v1/health", nil, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Port is one side of a pair as GET /v1/pairs shows it.
type Port struct {
	Name     *string `json:"name"`
	Ifindex  int     `json:"ifindex"`
	Mode     string  `json:"mode"`
	Attached bool    `json:"attached"`
}

// Pair is one pair of GET /v1/pairs (the fields an agent needs).
type Pair struct {
	ID       int      `json:"id"`
	UCMAC    string   `json:"ucmac"`
	BCMAC    string   `json:"bcmac"`
	MAC      *string  `json:"mac"`
	Mode     *string  `json:"mode"`
	Vin      *Port    `json:"vin"`
	Vex      *Port    `json:"vex"`
	Problems []string `json:"problems"`
}

// Pairs lists every pair.
func (d *Driver) Pairs() ([]Pair, error) {
	var r struct {
		Pairs []Pair `json:"pairs"`
	}
	if err := d.call("GET", "/v1/pairs", nil, &r); err != nil {
		return nil, err
	}
	return r.Pairs, nil
}
