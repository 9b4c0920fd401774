package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nftablesTable is the table kube-proxy's nftables mode writes (pkg/proxy/nftables: kubeProxyTable).
const nftablesTable = "kube-proxy"

// routedNFTables reads, over netlink, the addresses the Service chains of kube-proxy's nftables table send new
// connections to, leaving out the chains of Services in namespaces skip names. Unlike `nft list ruleset` (seconds
// of kernel time with ten thousand Services, nft 1.0 fetches every rule to list one chain), it asks the kernel for
// the chain names and then for the rules of the few chains it reads: a cluster's background costs the watch
// nothing.
func routedNFTables(ns string, skip []string) (map[string]bool, error) {
	conn, err := nodeNFTables(ns)
	if err != nil {
		return nil, err
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list the node's chains: %w", err)
	}
	byName := map[string]*nftables.Chain{}
	var services []*nftables.Chain
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != nftablesTable {
			continue
		}
		byName[c.Name] = c
		if serviceChain(c.Name) && !inNamespaces(c.Name, skip) {
			services = append(services, c)
		}
	}
	r := &nfReader{conn: conn, chains: byName, routed: map[string]bool{}}
	for _, c := range services {
		if err := r.readServiceChain(c); err != nil {
			return nil, err
		}
	}
	return r.routed, nil
}

// nodeNFTables is a netlink connection to nf_tables in a node's namespace, for one reading of its rules.
func nodeNFTables(ns string) (*nftables.Conn, error) {
	handle, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer handle.Close()
	return nftables.New(nftables.WithNetNSFd(int(handle)), nftables.AsLasting())
}

// inNamespaces tells whether a chain is of a Service in one of namespaces: nftables mode names a Service's chains
// "service-HASH-namespace/name/protocol/port" (servicePortChainNameBase).
func inNamespaces(chain string, namespaces []string) bool {
	for _, ns := range namespaces {
		if strings.Contains(chain, "-"+ns+"/") {
			return true
		}
	}
	return false
}

type nfReader struct {
	conn   *nftables.Conn
	chains map[string]*nftables.Chain
	routed map[string]bool
}

// readServiceChain follows a Service chain: a DNAT through a numgen map of address . port, or jumps (a verdict map,
// a goto) to endpoint chains that each DNAT to one address.
func (r *nfReader) readServiceChain(c *nftables.Chain) error {
	rules, err := r.conn.GetRules(c.Table, c)
	if err != nil {
		return fmt.Errorf("rules of %s: %w", c.Name, err)
	}
	for _, rule := range rules {
		for _, e := range rule.Exprs {
			switch e := e.(type) {
			case *expr.Lookup:
				if e.IsDestRegSet || strings.HasPrefix(e.SetName, "__map") {
					if err := r.readMap(c.Table, e.SetName); err != nil {
						return err
					}
				}
			case *expr.Verdict:
				if err := r.readEndpointChain(e.Chain); err != nil {
					return err
				}
			}
		}
		if ip := natAddress(rule.Exprs); ip != "" {
			r.routed[ip] = true
		}
	}
	return nil
}

// readMap reads a map's elements: addresses (address . port) of a DNAT map, or the chains of a verdict map.
func (r *nfReader) readMap(t *nftables.Table, name string) error {
	set, err := r.conn.GetSetByName(t, name)
	if err != nil {
		return fmt.Errorf("map %s: %w", name, err)
	}
	elements, err := r.conn.GetSetElements(set)
	if err != nil {
		return fmt.Errorf("elements of map %s: %w", name, err)
	}
	for _, el := range elements {
		switch {
		case isVerdictMap(set):
			if err := r.readEndpointChain(verdictChain(el.Val)); err != nil {
				return err
			}
		case len(el.Val) >= 4:
			// A concatenation's fields are each padded to 4 bytes: the address comes first.
			r.routed[net.IP(el.Val[:4]).String()] = true
		}
	}
	return nil
}

// isVerdictMap tells a verdict map; google/nftables v0.3.0 records a verdict data type as the set's key type.
func isVerdictMap(set *nftables.Set) bool {
	return set.IsMap && (set.DataType.Name == nftables.TypeVerdict.Name || set.KeyType.Name == nftables.TypeVerdict.Name)
}

// verdictChain is the chain a verdict map element jumps to: its data are the verdict's netlink attributes
// (NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN), which the library hands over undecoded.
func verdictChain(data []byte) string {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return ad.String()
		}
	}
	return ""
}

// readEndpointChain reads the address an endpoint chain DNATs to (chains it does not know, such as
// mark-for-masquerade, give none).
func (r *nfReader) readEndpointChain(name string) error {
	c, ok := r.chains[name]
	if !ok || !strings.HasPrefix(name, "endpoint-") {
		return nil
	}
	rules, err := r.conn.GetRules(c.Table, c)
	if err != nil {
		return fmt.Errorf("rules of %s: %w", name, err)
	}
	for _, rule := range rules {
		if ip := natAddress(rule.Exprs); ip != "" {
			r.routed[ip] = true
		}
	}
	return nil
}

// natAddress is the address a rule's DNAT sets from an immediate ("dnat to 10.1.2.3:8080"), or "".
func natAddress(exprs []expr.Any) string {
	loaded := map[uint32][]byte{}
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Immediate:
			loaded[e.Register] = e.Data
		case *expr.NAT:
			if e.Type == expr.NATTypeDestNAT {
				if data := loaded[e.RegAddrMin]; len(data) == 4 {
					return net.IP(data).String()
				}
			}
		}
	}
	return ""
}

// iptablesNATTable is the table kube-proxy's iptables mode writes its Service chains in (iptables-nft: family ip).
const iptablesNATTable = "nat"

// iptablesServiceChains are the chains kube-proxy's iptables mode sends a Service port's new connections through
// (pkg/proxy/iptables/proxier.go, v1.37: servicePortPolicyClusterChain "KUBE-SVC-" and
// servicePortPolicyLocalChainName "KUBE-SVL-", each the first 16 characters of base32(sha256(servicePortName +
// protocol)), where servicePortName is "namespace/name" and ":port-name" when the port has one, and the protocol is
// lower case). KUBE-EXT-… chains lead to these, so they route nothing of their own.
func iptablesServiceChains(servicePortName, protocol string) []string {
	hash := sha256.Sum256([]byte(servicePortName + strings.ToLower(protocol)))
	name := base32.StdEncoding.EncodeToString(hash[:])[:16]
	return []string{"KUBE-SVC-" + name, "KUBE-SVL-" + name}
}

// routedIPTables reads, over netlink, the addresses the given Service chains of iptables mode (iptablesServiceChains)
// send new connections to: each jumps to endpoint chains (KUBE-SEP-…), each of which DNATs to one Pod address
// (iptables-nft 1.8.9 writes "-j DNAT" as nftables' own dnat expression, older ones as the xtables target). Only
// these chains and the endpoint chains they jump to are asked for, one chain at a time (the kernel finds a chain by
// its name): unlike `iptables-save` (0.8 s with ten thousand Services), the rest of the table costs nothing. A chain not there (a Service without endpoints, a policy the
// Service does not use) is skipped.
func routedIPTables(ns string, serviceChains []string) (map[string]bool, error) {
	conn, err := nodeNFTables(ns)
	if err != nil {
		return nil, err
	}
	defer conn.CloseLasting()
	table := &nftables.Table{Name: iptablesNATTable, Family: nftables.TableFamilyIPv4}
	rulesOf := func(chain string) ([]*nftables.Rule, error) {
		rules, err := conn.GetRules(table, &nftables.Chain{Name: chain, Table: table})
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("rules of %s: %w", chain, err)
		}
		return rules, nil
	}
	routed := map[string]bool{}
	for _, chain := range serviceChains {
		rules, err := rulesOf(chain)
		if err != nil {
			return nil, err
		}
		for _, rule := range rules {
			for _, e := range rule.Exprs {
				v, ok := e.(*expr.Verdict)
				if !ok || !strings.HasPrefix(v.Chain, "KUBE-SEP-") {
					continue
				}
				endpoint, err := rulesOf(v.Chain)
				if err != nil {
					return nil, err
				}
				for _, r := range endpoint {
					ip := xtDNATAddress(r.Exprs)
					if ip == "" {
						ip = natAddress(r.Exprs) // a DNAT iptables-nft wrote as nftables' own expression
					}
					if ip != "" {
						routed[ip] = true
					}
				}
			}
		}
	}
	return routed, nil
}

// xtDNATAddress is the address of a rule's xtables DNAT target (iptables-nft's "-j DNAT --to-destination"), or "".
func xtDNATAddress(exprs []expr.Any) string {
	for _, e := range exprs {
		t, ok := e.(*expr.Target)
		if !ok || t.Name != "DNAT" {
			continue
		}
		var ip net.IP
		switch info := t.Info.(type) {
		case *xt.NatRange2:
			ip = info.MinIP
		case *xt.NatRange:
			ip = info.MinIP
		case *xt.NatIPv4MultiRangeCompat:
			if len(*info) > 0 {
				ip = (*info)[0].MinIP
			}
		}
		if ip4 := ip.To4(); ip4 != nil {
			return ip4.String()
		}
	}
	return ""
}
