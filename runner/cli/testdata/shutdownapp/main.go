// shutdownapp is a small HTTP server with one of three reactions to SIGTERM, for runner check's tests:
// graceful (stop keep-alive, keep accepting while the proxies let go, then Shutdown and exit 0), immediate (no
// handler: the signal ends it) and stubborn (ignores SIGTERM until SIGKILL). Each request waits --work (100 ms).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "address to listen on")
	mode := flag.String("mode", "graceful", "graceful, immediate or stubborn")
	drain := flag.Duration("drain", 3*time.Second, "graceful: how long to keep accepting after SIGTERM")
	work := flag.Duration("work", 100*time.Millisecond, "how long each request takes (0: answer at once)")
	flag.Parse()
	if *mode == "stubborn" {
		signal.Ignore(syscall.SIGTERM)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *work > 0 {
			time.Sleep(*work)
		}
		fmt.Fprintln(w, "ok")
	})}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go srv.Serve(ln)
	if *mode != "graceful" {
		select {}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	srv.SetKeepAlivesEnabled(false)
	time.Sleep(*drain)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		os.Exit(1)
	}
}
