package main

import (
	"context"
	"errors"
)

// startMesh starts mesh mode: listen on --mesh-port and forward to the app.
func startMesh(ctx context.Context, r *registrar) (inbound, error) {
	return nil, errors.New("mesh mode is not built yet")
}
