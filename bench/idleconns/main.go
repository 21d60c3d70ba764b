// Command idleconns measures what an idle keep-alive client connection
// costs a proxy in resident memory: it reads the proxy's RSS, opens -n
// connections that each make one GET and then stay open, idle, reads the
// RSS again, and prints the difference per connection. bench/run.sh runs it
// against each contender (nginx's worker, HAProxy, the agent).
//
//	idleconns -url http://127.0.0.1:8070/ -pid 1234 [-n 9000]
//
// Output, one line: connections, RSS before and after (KiB), KiB per
// connection.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	target := flag.String("url", "", "`URL` of the proxy (http://HOST:PORT/)")
	pids := flag.String("pid", "", "comma-separated `PIDS` whose RSS is summed (nginx: its worker)")
	n := flag.Int("n", 9000, "idle keep-alive connections to hold (the process fd limit bounds it)")
	settle := flag.Duration("settle", time.Second, "wait after the last connection before reading the RSS")
	flag.Parse()
	if err := run(*target, *pids, *n, *settle); err != nil {
		fmt.Fprintf(os.Stderr, "idleconns: %v\n", err)
		os.Exit(1)
	}
}

func run(target, pids string, n int, settle time.Duration) error {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return fmt.Errorf("invalid -url %q: want http://HOST:PORT/", target)
	}
	if pids == "" {
		return errors.New("-pid is required")
	}
	before, err := rss(pids)
	if err != nil {
		return err
	}
	req := []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\n\r\n")
	conns := make([]net.Conn, n)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ferr error
		next = make(chan int)
	)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := open(u.Host, req)
				if err != nil {
					mu.Lock()
					ferr = fmt.Errorf("connection %d: %w", i, err)
					mu.Unlock()
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if ferr != nil {
		return ferr
	}
	time.Sleep(settle)
	after, err := rss(pids)
	if err != nil {
		return err
	}
	fmt.Printf("%d\t%d\t%d\t%.2f\n", n, before, after, float64(after-before)/float64(n))
	return nil
}

// open makes one keep-alive request on a new connection and returns it.
func open(host string, req []byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	res, err := http.ReadResponse(bufio.NewReaderSize(c, 512), nil)
	if err == nil {
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err == nil && (res.StatusCode != http.StatusOK || res.Close) {
			err = fmt.Errorf("answer %s (close=%t), want a kept-alive 200", res.Status, res.Close)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// rss sums VmRSS (KiB) of the comma-separated pids.
func rss(pids string) (int64, error) {
	var sum int64
	for _, p := range strings.Split(pids, ",") {
		b, err := os.ReadFile("/proc/" + strings.TrimSpace(p) + "/status")
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("pid %s: VmRSS %q: %w", p, v, err)
				}
				sum += kb
			}
		}
	}
	return sum, nil
}
