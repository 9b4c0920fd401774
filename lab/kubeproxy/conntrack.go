package kubeproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rollout-lab/rollout-lab/lab/nsnet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// conntrackSocket knows where a node's NAT sent each TCP connection. It follows the node's conntrack NEW events
// (each connection's entry as the kernel confirms it, the DNAT already decided), because the kernel deletes the
// entry of a connection whose only answer was a RST at once (nf_conntrack_proto_tcp.c: "If only reply is a RST, we
// can consider ourselves not to have an established connection ... delete the conntrack immediately"), and a
// refused connection is exactly the one to attribute. Entries not seen as events (events lost under load) are
// asked for with IPCTNL_MSG_CT_GET by the original tuple.
type conntrackSocket struct {
	mu     sync.Mutex
	socket *nl.NetlinkSocket

	events  *nl.NetlinkSocket
	stopped atomic.Bool
	done    chan struct{}
	seenMu  sync.Mutex
	seen    map[tuple]seenEntry
	swept   time.Time
}

type tuple struct {
	src, dst netip.AddrPort
}

type seenEntry struct {
	reply netip.AddrPort
	at    time.Time
}

// seenTTL is how long a connection's routing is remembered: as long as conntrack keeps a closed connection's entry
// (TIME_WAIT, 120 s), the longest a run asks about it after it ended.
const seenTTL = 2 * time.Minute

// eventWait bounds the wait for a connection's NEW event, which the kernel sends before the connect can fail.
const eventWait = 50 * time.Millisecond

func openConntrack(ns string) (*conntrackSocket, error) {
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
	socket, err := nl.GetNetlinkSocketAt(handle, current, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	c := &conntrackSocket{socket: socket, seen: map[tuple]seenEntry{}, done: make(chan struct{})}
	if c.events, err = nl.SubscribeAt(handle, current, unix.NETLINK_NETFILTER, unix.NFNLGRP_CONNTRACK_NEW); err != nil {
		socket.Close()
		return nil, fmt.Errorf("conntrack events: %w", err)
	}
	// A large buffer keeps bursts of new connections; a receive wakes up now and then so close does not hang.
	_ = unix.SetsockoptInt(int(c.events.GetFd()), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	if err := c.events.SetReceiveTimeout(&unix.Timeval{Usec: 200000}); err != nil {
		return nil, err
	}
	go c.follow()
	return c, nil
}

func (c *conntrackSocket) follow() {
	defer close(c.done)
	for !c.stopped.Load() {
		msgs, _, err := c.events.Receive()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
				continue // lost events are asked for by GET
			}
			return
		}
		now := time.Now()
		for _, m := range msgs {
			if len(m.Data) < 4 {
				continue
			}
			t, reply, ok := parseEntry(m.Data[4:])
			if !ok {
				continue
			}
			c.seenMu.Lock()
			c.seen[t] = seenEntry{reply: reply, at: now}
			if now.Sub(c.swept) > seenTTL/4 {
				for k, e := range c.seen {
					if now.Sub(e.at) > seenTTL {
						delete(c.seen, k)
					}
				}
				c.swept = now
			}
			c.seenMu.Unlock()
		}
	}
}

// parseEntry reads a conntrack message's original tuple and its reply direction's source (TCP over IPv4 only).
func parseEntry(b []byte) (tuple, netip.AddrPort, bool) {
	orig, ok := findAttr(b, nl.CTA_TUPLE_ORIG)
	if !ok {
		return tuple{}, netip.AddrPort{}, false
	}
	src, ok1 := tupleEnd(orig, nl.CTA_IP_V4_SRC, nl.CTA_PROTO_SRC_PORT)
	dst, ok2 := tupleEnd(orig, nl.CTA_IP_V4_DST, nl.CTA_PROTO_DST_PORT)
	reply, ok3 := findAttr(b, nl.CTA_TUPLE_REPLY)
	if !ok1 || !ok2 || !ok3 {
		return tuple{}, netip.AddrPort{}, false
	}
	replySrc, ok := tupleEnd(reply, nl.CTA_IP_V4_SRC, nl.CTA_PROTO_SRC_PORT)
	return tuple{src: src, dst: dst}, replySrc, ok
}

func tupleEnd(t []byte, ipType, portType uint16) (netip.AddrPort, bool) {
	ipAttrs, ok := findAttr(t, nl.CTA_TUPLE_IP)
	if !ok {
		return netip.AddrPort{}, false
	}
	ip, ok := findAttr(ipAttrs, ipType)
	if !ok || len(ip) != 4 {
		return netip.AddrPort{}, false
	}
	protoAttrs, ok := findAttr(t, nl.CTA_TUPLE_PROTO)
	if !ok {
		return netip.AddrPort{}, false
	}
	port, ok := findAttr(protoAttrs, portType)
	if !ok || len(port) != 2 {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip)), binary.BigEndian.Uint16(port)), true
}

// route is where the node sent the connection src → dst: from its NEW event, or (an event lost) its entry.
func (c *conntrackSocket) route(src, dst *net.TCPAddr) (*net.TCPAddr, error) {
	key := tuple{src: src.AddrPort(), dst: dst.AddrPort()}
	key.src = netip.AddrPortFrom(key.src.Addr().Unmap(), key.src.Port())
	key.dst = netip.AddrPortFrom(key.dst.Addr().Unmap(), key.dst.Port())
	for deadline := time.Now().Add(eventWait); ; time.Sleep(time.Millisecond) {
		c.seenMu.Lock()
		e, ok := c.seen[key]
		c.seenMu.Unlock()
		if ok {
			return net.TCPAddrFromAddrPort(e.reply), nil
		}
		if time.Now().After(deadline) {
			break
		}
	}
	return c.replySource(src, dst)
}

func (c *conntrackSocket) close() {
	if !c.stopped.Swap(true) {
		<-c.done
		c.events.Close()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.socket != nil {
		c.socket.Close()
		c.socket = nil
	}
}

// errNoEntry is a connection the node's conntrack does not know (it never reached the node, or its entry expired).
var errNoEntry = errors.New("no conntrack entry")

// replySource finds the TCP entry whose original direction is src → dst and returns its reply direction's source:
// the Pod's address and port the node's DNAT chose.
func (c *conntrackSocket) replySource(src, dst *net.TCPAddr) (*net.TCPAddr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.socket == nil {
		return nil, errors.New("conntrack closed")
	}
	src4, dst4 := src.IP.To4(), dst.IP.To4()
	if src4 == nil || dst4 == nil {
		return nil, fmt.Errorf("IPv4 only: %s → %s", src, dst)
	}
	req := nl.NewNetlinkRequest((int(netlink.ConntrackTable)<<8)|nl.IPCTNL_MSG_CT_GET, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: c.socket}}
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
	orig := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	ip.AddRtAttr(nl.CTA_IP_V4_SRC, src4)
	ip.AddRtAttr(nl.CTA_IP_V4_DST, dst4)
	proto := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{unix.IPPROTO_TCP})
	proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(uint16(src.Port)))
	proto.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(uint16(dst.Port)))
	req.AddData(orig)
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, errNoEntry
		}
		return nil, err
	}
	for _, msg := range msgs {
		if len(msg) < 4 {
			continue
		}
		if addr, ok := replyTupleSource(msg[4:]); ok {
			return addr, nil
		}
	}
	return nil, errNoEntry
}

const attrTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

func findAttr(b []byte, typ uint16) ([]byte, bool) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return nil, false
	}
	for _, a := range attrs {
		if a.Attr.Type&attrTypeMask == typ {
			return a.Value, true
		}
	}
	return nil, false
}

func replyTupleSource(b []byte) (*net.TCPAddr, bool) {
	reply, ok := findAttr(b, nl.CTA_TUPLE_REPLY)
	if !ok {
		return nil, false
	}
	ipAttrs, ok := findAttr(reply, nl.CTA_TUPLE_IP)
	if !ok {
		return nil, false
	}
	ip, ok := findAttr(ipAttrs, nl.CTA_IP_V4_SRC)
	if !ok || len(ip) != 4 {
		return nil, false
	}
	protoAttrs, ok := findAttr(reply, nl.CTA_TUPLE_PROTO)
	if !ok {
		return nil, false
	}
	port, ok := findAttr(protoAttrs, nl.CTA_PROTO_SRC_PORT)
	if !ok || len(port) != 2 {
		return nil, false
	}
	return &net.TCPAddr{IP: net.IP(append([]byte{}, ip...)), Port: int(binary.BigEndian.Uint16(port))}, true
}

// dialIn creates the connection's socket inside namespace ns (a socket keeps the namespace it was made in), bound
// to source (port chosen by the kernel, returned), then connects it as any other.
func dialIn(ctx context.Context, ns string, source net.IP, dst *net.TCPAddr) (net.Conn, *net.TCPAddr, error) {
	var src *net.TCPAddr
	conn, err := nsnet.Dial(ctx, ns, BoundDialer(source, func(a *net.TCPAddr) { src = a }), "tcp", dst.String())
	return conn, src, err
}

// BoundDialer is a dialer whose socket is bound to source before the connect; bound gets the source address and
// port before the connect starts, so a node's conntrack entry can tell where the connection went while it is still
// waiting for an answer, and after it failed.
func BoundDialer(source net.IP, bound func(*net.TCPAddr)) *net.Dialer {
	return &net.Dialer{KeepAlive: 30 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var bindErr error
		err := c.Control(func(fd uintptr) {
			ip := source.To4()
			if bindErr = syscall.Bind(int(fd), &syscall.SockaddrInet4{Addr: [4]byte(ip)}); bindErr != nil {
				return
			}
			var sa syscall.Sockaddr
			if sa, bindErr = syscall.Getsockname(int(fd)); bindErr == nil {
				bound(&net.TCPAddr{IP: ip, Port: sa.(*syscall.SockaddrInet4).Port})
			}
		})
		return errors.Join(err, bindErr)
	}}
}
