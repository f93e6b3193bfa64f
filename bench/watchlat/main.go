// watchlat: how much later etcd's JSON gateway delivers a watch event than its gRPC API does.
//
// pyflannel watches etcd through the gateway (POST /v3/watch, chunked JSON); Go flanneld watches over gRPC.
// This program holds one watch of each kind on the same prefix, puts a key, and records when each watch
// saw the event, measured from just before the put. Run by bench/watch_latency.py inside a node namespace.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	endpoint := flag.String("endpoint", "", "etcd client URL")
	reps := flag.Int("reps", 40, "puts")
	gap := flag.Duration("gap", 50*time.Millisecond, "pause between puts")
	flag.Parse()
	if *endpoint == "" {
		fmt.Fprintln(os.Stderr, "watchlat: -endpoint is required")
		os.Exit(2)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "watchlat:", err)
		os.Exit(1)
	}
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const prefix = "/watchlat/"
	grpcSeen := make(chan time.Time, *reps)
	gatewaySeen := make(chan time.Time, *reps)
	errs := make(chan error, 1)
	go func() {
		for r := range cli.Watch(ctx, prefix, clientv3.WithPrefix()) {
			if len(r.Events) > 0 {
				grpcSeen <- time.Now()
			}
		}
	}()
	go func() {
		// key "/watchlat/" and range_end "/watchlat0", base64 as the gateway wants bytes fields.
		body := `{"create_request":{"key":"L3dhdGNobGF0Lw==","range_end":"L3dhdGNobGF0MA=="}}`
		resp, err := http.Post(*endpoint+"/v3/watch", "application/json", strings.NewReader(body))
		if err != nil {
			errs <- err
			return
		}
		defer resp.Body.Close()
		lines := bufio.NewReader(resp.Body)
		for {
			line, err := lines.ReadString('\n')
			if err != nil {
				errs <- err
				return
			}
			if strings.Contains(line, `"events"`) {
				gatewaySeen <- time.Now()
			}
		}
	}()
	time.Sleep(500 * time.Millisecond) // both watches created
	var viaGRPC, viaGateway []float64
	for i := 0; i < *reps; i++ {
		t0 := time.Now()
		if _, err := cli.Put(ctx, fmt.Sprintf("%sk%d", prefix, i), "v"); err != nil {
			fmt.Fprintln(os.Stderr, "watchlat: put:", err)
			os.Exit(1)
		}
		for _, w := range []struct {
			seen <-chan time.Time
			into *[]float64
		}{{grpcSeen, &viaGRPC}, {gatewaySeen, &viaGateway}} {
			select {
			case t := <-w.seen:
				*w.into = append(*w.into, float64(t.Sub(t0).Microseconds())/1000)
			case err := <-errs:
				fmt.Fprintln(os.Stderr, "watchlat: gateway watch:", err)
				os.Exit(1)
			case <-time.After(5 * time.Second):
				fmt.Fprintln(os.Stderr, "watchlat: no watch event within 5 s")
				os.Exit(1)
			}
		}
		time.Sleep(*gap)
	}
	if _, err := cli.Delete(ctx, prefix, clientv3.WithPrefix()); err != nil {
		fmt.Fprintln(os.Stderr, "watchlat: cleanup:", err)
	}
	out, _ := json.Marshal(map[string][]float64{"grpc_ms": viaGRPC, "gateway_ms": viaGateway})
	fmt.Println(string(out))
}
