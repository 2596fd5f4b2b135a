// Command loadgen sends pre-encoded gRPC unary requests at a server as fast as a fixed number of
// callers allows, and writes a report with the fields of ghz's JSON report that the benchmark reads.
//
// Why not ghz: ghz turns every request into a dynamic protobuf message, renders it as a template and
// keeps per-call statistics, about 90 µs of CPU a warm Check on this machine. On the one core the
// benchmark gives the load generator, that capped every server at ~10,500 Checks/s, so a faster
// server measured the generator, not itself. loadgen sends bytes that bench/workloads.mjs encoded
// once, through grpc-go's client (the same HTTP/2 stack as ghz), and only times each call.
//
// The request file is a sequence of records, each a 4-byte big-endian length and that many bytes of
// an encoded request message. Requests are sent round-robin across all callers, in file order: as
// fast as they are answered (closed loop), or with -rps at a fixed rate (open loop).
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// rawCodec passes the file's bytes through unchanged and keeps the answer's bytes unread: the
// benchmark checked the answer's content before the load, with the same request and server.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = data
	return nil
}

// Name is "proto": the content-type stays application/grpc+proto, what a protobuf client sends.
func (rawCodec) Name() string { return "proto" }

type latency struct {
	Percentage int   `json:"percentage"`
	Latency    int64 `json:"latency"` // nanoseconds, as ghz reports it
}

type report struct {
	Count                  int64            `json:"count"`
	Total                  int64            `json:"total"` // nanoseconds from the first call to the last answer
	Rps                    float64          `json:"rps"`
	LatencyDistribution    []latency        `json:"latencyDistribution"`
	StatusCodeDistribution map[string]int64 `json:"statusCodeDistribution"`
	ErrorDistribution      map[string]int64 `json:"errorDistribution"`
}

func readRequests(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	var head [4]byte
	for {
		if _, err := io.ReadFull(f, head[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("%s: record %d: truncated length", path, len(out))
		}
		msg := make([]byte, binary.BigEndian.Uint32(head[:]))
		if _, err := io.ReadFull(f, msg); err != nil {
			return nil, fmt.Errorf("%s: record %d: truncated message", path, len(out))
		}
		out = append(out, msg)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no requests", path)
	}
	return out, nil
}

type caller struct {
	latencies []int64
	codes     map[string]int64
	errs      map[string]int64
}

func newCaller() *caller { return &caller{codes: map[string]int64{}, errs: map[string]int64{}} }

func (c *caller) record(latency time.Duration, err error) {
	c.latencies = append(c.latencies, latency.Nanoseconds())
	c.codes[status.Code(err).String()]++
	if err != nil {
		c.errs[err.Error()]++
	}
}

// load is one run's shared settings and its clock.
type load struct {
	conns    []*grpc.ClientConn
	method   string
	requests [][]byte
	timeout  time.Duration
	start    time.Time
	lastEnd  atomic.Int64 // nanoseconds from start to the latest answer
}

func (l *load) call(conn *grpc.ClientConn, seq int64) (time.Time, error) {
	req := l.requests[seq%int64(len(l.requests))]
	var answer []byte
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	err := conn.Invoke(ctx, l.method, &req, &answer)
	cancel()
	end := time.Now()
	for at := end.Sub(l.start).Nanoseconds(); ; {
		prev := l.lastEnd.Load()
		if at <= prev || l.lastEnd.CompareAndSwap(prev, at) {
			break
		}
	}
	return end, err
}

// closedLoop: `concurrency` callers, each sending its next request when the last is answered, until
// `total` requests were sent or `deadline` passed (then the calls in flight are waited for).
func (l *load) closedLoop(concurrency int, total int64, deadline time.Time) []*caller {
	var next atomic.Int64 // the next request's sequence number, shared so the file is sent in order
	callers := make([]*caller, concurrency)
	var wg sync.WaitGroup
	for i := range callers {
		c := newCaller()
		callers[i] = c
		conn := l.conns[i%len(l.conns)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seq := next.Add(1) - 1
				if (total > 0 && seq >= total) || (total == 0 && !time.Now().Before(deadline)) {
					return
				}
				t0 := time.Now()
				end, err := l.call(conn, seq)
				c.record(end.Sub(t0), err)
			}
		}()
	}
	wg.Wait()
	return callers
}

// openLoop: one request every 1/rps seconds until `deadline`, whatever the answers do, at most
// `concurrency` in flight. A call's latency runs from when it was due, not from when it could be
// sent, so a server that falls behind is charged for the wait (no coordinated omission).
func (l *load) openLoop(concurrency int, rps float64, deadline time.Time) []*caller {
	c := newCaller()
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, concurrency)
	interval := time.Duration(float64(time.Second) / rps)
	for seq := int64(0); ; seq++ {
		due := l.start.Add(time.Duration(seq) * interval)
		if !due.Before(deadline) {
			break
		}
		time.Sleep(time.Until(due))
		slots <- struct{}{}
		wg.Add(1)
		go func(seq int64, due time.Time) {
			defer wg.Done()
			end, err := l.call(l.conns[seq%int64(len(l.conns))], seq)
			<-slots
			mu.Lock()
			c.record(end.Sub(due), err)
			mu.Unlock()
		}(seq, due)
	}
	wg.Wait()
	return []*caller{c}
}

func main() {
	addr := flag.String("addr", "", "host:port of the gRPC server (plaintext)")
	method := flag.String("call", "", "full method, e.g. /envoy.service.auth.v3.Authorization/Check")
	data := flag.String("data", "", "request file: records of a 4-byte big-endian length and an encoded message")
	concurrency := flag.Int("c", 50, "callers, each with one call in flight (with -rps: the most calls in flight)")
	connections := flag.Int("connections", 1, "HTTP/2 connections the callers share round-robin")
	duration := flag.Duration("z", 0, "send for this long (then wait for the calls in flight)")
	total := flag.Int64("n", 0, "send exactly this many requests instead of -z")
	rps := flag.Float64("rps", 0, "with -z: send at this fixed rate (open loop) instead of as fast as answered")
	timeout := flag.Duration("timeout", 20*time.Second, "deadline of each call")
	out := flag.String("o", "", "report file (JSON); standard output when empty")
	flag.Parse()
	if *addr == "" || *method == "" || *data == "" || *concurrency < 1 || *connections < 1 ||
		(*duration <= 0) == (*total <= 0) || *rps < 0 || (*rps > 0 && *duration <= 0) {
		fmt.Fprintln(os.Stderr, "usage: loadgen -addr HOST:PORT -call /pkg.Service/Method -data FILE (-z DURATION [-rps N] | -n COUNT) [-c N] [-connections N] [-o FILE]")
		os.Exit(2)
	}
	requests, err := readRequests(*data)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}

	l := &load{method: *method, requests: requests, timeout: *timeout}
	for range *connections {
		conn, err := grpc.NewClient(*addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		conn.Connect()
		defer conn.Close()
		l.conns = append(l.conns, conn)
	}

	l.start = time.Now()
	deadline := l.start.Add(*duration)
	var callers []*caller
	if *rps > 0 {
		callers = l.openLoop(*concurrency, *rps, deadline)
	} else {
		callers = l.closedLoop(*concurrency, *total, deadline)
	}

	r := report{StatusCodeDistribution: map[string]int64{}, ErrorDistribution: map[string]int64{}}
	var all []int64
	for _, c := range callers {
		all = append(all, c.latencies...)
		for k, v := range c.codes {
			r.StatusCodeDistribution[k] += v
		}
		for k, v := range c.errs {
			r.ErrorDistribution[k] += v
		}
	}
	slices.Sort(all)
	r.Count = int64(len(all))
	r.Total = l.lastEnd.Load()
	if r.Total > 0 {
		r.Rps = float64(r.Count) / (float64(r.Total) / 1e9)
	}
	for _, p := range []int{10, 25, 50, 75, 90, 95, 99} {
		if len(all) == 0 {
			break
		}
		// Nearest rank: the smallest latency that at least p % of the calls did not exceed.
		rank := (p*len(all) + 99) / 100
		r.LatencyDistribution = append(r.LatencyDistribution, latency{Percentage: p, Latency: all[max(rank, 1)-1]})
	}
	body, _ := json.MarshalIndent(r, "", "  ")
	if *out == "" {
		os.Stdout.Write(append(body, '\n'))
	} else if err := os.WriteFile(*out, body, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
