package kubeproxy

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ruleWatch follows a node's ruleset as the kernel commits it: a netlink socket in the node's namespace joined to
// the nf_tables notification group (what `nft monitor` reads) receives every committed transaction, ended by a
// NEWGEN message (kube-proxy's nftables transactions, and iptables-nft's, which is what Debian's iptables is);
// after each burst the ruleset is listed and the addresses its Service chains send new connections to are compared
// with the previous list. An address that left is a service-out on that node, timed at the burst's first commit.
type ruleWatch struct {
	ns, mode string
	skip     []string // nftables mode: namespaces whose Services' chains are not read
	// iptablesChains are, in iptables mode, the Service chains to read (iptables mode's chain names hide the
	// namespace: they are computed from the Services', see iptablesServiceChains).
	iptablesChains func() []string
	socket         *nl.NetlinkSocket
	stopped        atomic.Bool
	logger         *slog.Logger
	onGone         func(at time.Time, gone []string)

	mu      sync.Mutex
	current map[string]bool
	done    chan struct{}
}

// settle is how long a burst of commits must be quiet before the ruleset is listed: one kube-proxy
// transaction prints its lines within microseconds; the event keeps the burst's first time.
const settle = 5 * time.Millisecond

func startRuleWatch(ns, mode string, skip []string, iptablesChains func() []string, onGone func(time.Time, []string), logger *slog.Logger) (*ruleWatch, error) {
	w := &ruleWatch{ns: ns, mode: mode, skip: skip, iptablesChains: iptablesChains, logger: logger, onGone: onGone, current: map[string]bool{}, done: make(chan struct{})}
	if mode == ModeIPTables {
		out, err := exec.Command("iptables", "-V").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("iptables -V: %v: %s", err, out)
		}
		if !strings.Contains(string(out), "nf_tables") {
			return nil, fmt.Errorf("iptables is %s: the lab reads kube-proxy's iptables rules through nf_tables, so it needs iptables-nft (update-alternatives --set iptables /usr/sbin/iptables-nft)", strings.TrimSpace(string(out)))
		}
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "tables").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nft in the node's namespace: %v: %s (does the kernel have nf_tables? modprobe nf_tables)", err, bytes.TrimSpace(out))
	}
	handle, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer handle.Close()
	current, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer current.Close()
	if w.socket, err = nl.SubscribeAt(handle, current, unix.NETLINK_NETFILTER, unix.NFNLGRP_NFTABLES); err != nil {
		return nil, fmt.Errorf("nf_tables notifications in the node's namespace: %w", err)
	}
	// A receive wakes up now and then, so that stop does not wait on a quiet node.
	if err := w.socket.SetReceiveTimeout(&unix.Timeval{Usec: 200000}); err != nil {
		return nil, err
	}
	commits := make(chan time.Time, 1024)
	go func() {
		defer close(commits)
		for !w.stopped.Load() {
			msgs, _, err := w.socket.Receive()
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
					continue
				}
				if errors.Is(err, unix.ENOBUFS) { // notifications lost: the next list still sees the state
					select {
					case commits <- time.Now():
					default:
					}
					continue
				}
				if !w.stopped.Load() {
					w.logger.Warn("nf_tables notifications", "ns", ns, "err", err)
				}
				return
			}
			for _, m := range msgs {
				if m.Header.Type == nftMsgNewGen {
					select {
					case commits <- time.Now():
					default: // a burst already pending covers this commit
					}
				}
			}
		}
	}()
	go w.follow(commits)
	return w, nil
}

// nftMsgNewGen ends every committed nf_tables transaction: (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN.
const nftMsgNewGen = 10<<8 | 15

func (w *ruleWatch) follow(lines <-chan time.Time) {
	defer close(w.done)
	for first := range lines {
		// Drain the burst.
		for quiet := false; !quiet; {
			select {
			case _, ok := <-lines:
				if !ok {
					return
				}
			case <-time.After(settle):
				quiet = true
			}
		}
		routed, err := w.list()
		if err != nil {
			w.logger.Warn("list the node's rules", "ns", w.ns, "err", err)
			continue
		}
		w.mu.Lock()
		var gone []string
		for ip := range w.current {
			if !routed[ip] {
				gone = append(gone, ip)
			}
		}
		w.current = routed
		w.mu.Unlock()
		if len(gone) > 0 {
			w.onGone(first, gone)
		}
	}
}

// routed is the set of addresses the node's Service chains send new connections to, as last listed.
func (w *ruleWatch) routed() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// list reads the node's rules as the mode writes them, over netlink: the watched Services' chains and what they
// lead to.
func (w *ruleWatch) list() (map[string]bool, error) {
	if w.mode == ModeIPTables {
		return routedIPTables(w.ns, w.iptablesChains())
	}
	return routedNFTables(w.ns, w.skip)
}

func (w *ruleWatch) stop() {
	if w.stopped.Swap(true) {
		return
	}
	<-w.done
	w.socket.Close()
}

func serviceChain(name string) bool {
	for _, prefix := range []string{"service-", "external-", "KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}
