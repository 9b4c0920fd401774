package controlplane

import (
	"net"
	"sync"
)

// multiListener accepts on several listeners as one: the apiserver takes a single listener, and serves on loopback
// and on the node network's host address.
type multiListener struct {
	listeners []net.Listener
	conns     chan acceptResult
	closed    chan struct{}
	closeOnce sync.Once
}

type acceptResult struct {
	conn net.Conn
	err  error
}

func newMultiListener(listeners ...net.Listener) *multiListener {
	m := &multiListener{listeners: listeners, conns: make(chan acceptResult), closed: make(chan struct{})}
	for _, ln := range listeners {
		go func() {
			for {
				c, err := ln.Accept()
				select {
				case m.conns <- acceptResult{c, err}:
				case <-m.closed:
					if c != nil {
						c.Close()
					}
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	return m
}

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case r := <-m.conns:
		return r.conn, r.err
	case <-m.closed:
		return nil, net.ErrClosed
	}
}

func (m *multiListener) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		for _, ln := range m.listeners {
			if e := ln.Close(); e != nil && err == nil {
				err = e
			}
		}
	})
	return err
}

// Addr is the first listener's (loopback) address: its port is every listener's.
func (m *multiListener) Addr() net.Addr { return m.listeners[0].Addr() }
