package cni

import (
	"fmt"
	"sync"
	"time"
)

// addressQuarantine is how long a freed Pod address waits before another Pod gets it. A node's proxy may still
// route to a deleted Pod's address for up to the service-out delay (at most plan.MaxServiceOut, one minute), and a
// client may still hold a connection to it; a new Pod at the same address would take that traffic and hide the
// very failures the lab measures. Kubernetes' CNI plugins (host-local) likewise hand out the next unused address
// before they come back to a released one.
const addressQuarantine = 2 * time.Minute

// addressPool hands out the host numbers first..last of a lab's block: never-used ones first, then freed ones in
// the order they were freed, each only after its quarantine.
type addressPool struct {
	mu         sync.Mutex
	next, last uint32
	freed      []freedAddress
	quarantine time.Duration
	now        func() time.Time
}

type freedAddress struct {
	host uint32
	at   time.Time
}

func newAddressPool(first, last uint32, quarantine time.Duration) *addressPool {
	return &addressPool{next: first, last: last, quarantine: quarantine, now: time.Now}
}

func (p *addressPool) take() (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.next <= p.last {
		host := p.next
		p.next++
		return host, nil
	}
	if len(p.freed) > 0 && p.now().Sub(p.freed[0].at) >= p.quarantine {
		host := p.freed[0].host
		p.freed = p.freed[1:]
		return host, nil
	}
	return 0, fmt.Errorf("the lab's Pod addresses are exhausted: all in use, %d freed less than %s ago (a freed address waits that long before reuse)",
		len(p.freed), p.quarantine)
}

func (p *addressPool) release(host uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.freed = append(p.freed, freedAddress{host: host, at: p.now()})
}
