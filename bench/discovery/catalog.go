package main

import (
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// txnBatch is how many catalog operations go in one /v1/txn call; Consul
// refuses more than 128.
const txnBatch = 64

// synthInstance is a catalog-only instance on a synthetic node: it has no
// health checks, so Consul reports it passing, and it need not be reachable
// (the agent only checks instances passively, when it sends them requests).
type synthInstance struct {
	node, service, id string
	port              int
	// addr, meta and weight are optional: an empty addr means the node's
	// (unreachable) address, weight 0 Consul's default of 1.
	addr   string
	meta   map[string]string
	weight int
	// check registers the instance with a passing service check, as the
	// registrar registers every instance.
	check bool
}

// nodeAddr gives synthetic node i an address in 10.0.0.0/8.
func nodeAddr(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", (i>>16)&255, (i>>8)&255, i&255)
}

// registerSynthetic writes nodes and instances to the catalog in batched
// transactions.
func registerSynthetic(c *api.Client, nodes []string, insts []synthInstance) error {
	var ops api.TxnOps
	for i, n := range nodes {
		ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: n, Address: nodeAddr(i + 1)}}})
	}
	for _, in := range insts {
		ops = append(ops, &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: in.node,
			Service: in.agentService()}})
		if in.check {
			ops = append(ops, &api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
				Node: in.node, CheckID: "service:" + in.id, Name: "alive", Status: api.HealthPassing,
				ServiceID: in.id, ServiceName: in.service}}})
		}
	}
	return runTxn(c, ops)
}

// deleteNodes removes synthetic nodes, and with them their instances.
func deleteNodes(c *api.Client, nodes []string) error {
	var ops api.TxnOps
	for _, n := range nodes {
		ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeDelete, Node: api.Node{Node: n}}})
	}
	return runTxn(c, ops)
}

// deleteInstance removes one synthetic instance.
func deleteInstance(c *api.Client, in synthInstance) error {
	return runTxn(c, api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceDelete, Node: in.node,
		Service: api.AgentService{ID: in.id, Service: in.service}}}})
}

func runTxn(c *api.Client, ops api.TxnOps) error {
	for len(ops) > 0 {
		n := min(txnBatch, len(ops))
		ok, resp, _, err := c.Txn().Txn(ops[:n], nil)
		if err != nil {
			return fmt.Errorf("consul txn: %w", err)
		}
		if !ok {
			var errs []string
			for _, e := range resp.Errors {
				errs = append(errs, e.What)
			}
			return fmt.Errorf("consul txn rolled back: %s", strings.Join(errs, "; "))
		}
		ops = ops[n:]
	}
	return nil
}

func (in synthInstance) agentService() api.AgentService {
	s := api.AgentService{ID: in.id, Service: in.service, Port: in.port, Address: in.addr, Meta: in.meta}
	if in.weight > 0 {
		s.Weights = api.AgentWeights{Passing: in.weight, Warning: 1}
	}
	return s
}
