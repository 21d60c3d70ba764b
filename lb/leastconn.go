package lb

import "net/http"

// PolicyLeastConn is nginx's least_conn.
const PolicyLeastConn = "least_conn"

// leastConn picks the instance with the fewest requests in flight per unit
// of weight by scanning the whole pool, O(n), as nginx's least_conn does
// (rank.go).
var leastConn = policyDef{
	name: PolicyLeastConn,
	pick: func(p *Pool, _ *http.Request, tried []*Instance) *Instance {
		var c clock
		return p.scan(tried, &c, costLoad)
	},
}
