// Command soak runs the agent under steady GET and POST load for a bounded
// time while instances churn (rolling replacements and SIGKILLs), and
// reports requests sent and failed, the agent's memory growth and its
// goroutine count. It uses real parts: a Consul dev agent, registrars
// wrapping Tornado processes, and bin/agent (run `make build` first, or
// `make soak`).
//
//	go run ./bench/soak -duration 10m
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
)

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "how long to run (bounded: at most 2h)")
	instances := flag.Int("instances", 5, "instances kept running")
	getters := flag.Int("getters", 8, "concurrent GET clients")
	posters := flag.Int("posters", 2, "concurrent POST clients")
	churn := flag.Duration("churn", 10*time.Second, "time between instance replacements (every third one is a SIGKILL)")
	flag.Parse()
	if *duration <= 0 || *duration > 2*time.Hour {
		fmt.Fprintf(os.Stderr, "soak: invalid -duration %v: must be >0 and at most 2h\n", *duration)
		os.Exit(2)
	}
	if err := run(*duration, *instances, *getters, *posters, *churn); err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(1)
	}
}

// start runs name with args, its output discarded, as the soak's
// registrars and agent.
func start(env []string, name string, args ...string) (*testproc.Proc, error) {
	p := testproc.Prepare(env, name, args...)
	p.Cmd.Stdout, p.Cmd.Stderr = nil, nil
	return p, p.Launch()
}

func run(duration time.Duration, n, getters, posters int, churn time.Duration) error {
	root, err := testproc.RepoRoot()
	if err != nil {
		return err
	}
	agentBin, regBin := filepath.Join(root, "bin", "agent"), filepath.Join(root, "bin", "registrar")
	for _, b := range []string{agentBin, regBin} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run make build", b)
		}
	}
	dir, err := os.MkdirTemp("", "meshlb-soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := consultest.Start(dir)
	if err != nil {
		return err
	}
	defer srv.Stop()
	env := srv.Env()

	var mu sync.Mutex
	regs := map[int]*testproc.Proc{}
	addInstance := func() error {
		ports, err := testproc.FreePorts(1)
		if err != nil {
			return err
		}
		port := ports[0]
		argv, err := tornadotest.Command(port)
		if err != nil {
			return err
		}
		args := append([]string{"--service", "soak", "--port", strconv.Itoa(port), "--drain", "2s", "--log-level", "error", "--"},
			append(argv, "--logging=warning")...)
		p, err := start(env, regBin, args...)
		if err != nil {
			return err
		}
		mu.Lock()
		regs[port] = p
		mu.Unlock()
		return nil
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range regs {
			p.Stop(syscall.SIGTERM, 20*time.Second)
		}
	}()
	for range n {
		if err := addInstance(); err != nil {
			return err
		}
	}
	ports, err := testproc.FreePorts(2)
	if err != nil {
		return err
	}
	lport, aport := ports[0], ports[1]
	addr, admin := fmt.Sprintf("127.0.0.1:%d", lport), fmt.Sprintf("127.0.0.1:%d", aport)
	agent, err := start(env, agentBin, "--listen", addr, "--service", "soak", "--admin", admin, "--log-level", "warn")
	if err != nil {
		return err
	}
	defer agent.Stop(syscall.SIGTERM, 20*time.Second)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := client.Get("http://" + addr + "/"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent on %s not serving after 30s", addr)
		}
		time.Sleep(100 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sigs; cancel() }()

	var gets, getFails, posts, postFails atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range getters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := client.Get("http://" + addr + "/")
				gets.Add(1)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if ctx.Err() == nil && (err != nil || resp.StatusCode != 200) {
					getFails.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("GET: %v %v", err, status(resp)))
				}
			}
		}()
	}
	for i := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ctx.Err() == nil; j++ {
				resp, err := client.Post("http://"+addr+"/echo", "text/plain", strings.NewReader(fmt.Sprintf("p%d-%d", i, j)))
				posts.Add(1)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if ctx.Err() == nil && (err != nil || resp.StatusCode != 200) {
					postFails.Add(1)
				}
			}
		}()
	}

	type sample struct {
		at         time.Duration
		rssKiB     int
		goroutines int
	}
	var samples []sample
	began := time.Now()
	take := func() {
		samples = append(samples, sample{time.Since(began).Round(time.Second), rss(agent.Cmd.Process.Pid), goroutines(client, admin)})
	}
	take()
	churnT := time.NewTicker(churn)
	sampleT := time.NewTicker(10 * time.Second)
	replaced, killed := 0, 0
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-sampleT.C:
			take()
		case <-churnT.C:
			mu.Lock()
			var victim int
			for port := range regs {
				victim = port
				break
			}
			p := regs[victim]
			delete(regs, victim)
			mu.Unlock()
			if err := addInstance(); err != nil {
				fmt.Fprintf(os.Stderr, "soak: add instance: %v\n", err)
			}
			time.Sleep(2 * time.Second) // the new instance registers and passes
			if (replaced+killed)%3 == 2 {
				killApp(p)
				killed++
			} else {
				go p.Stop(syscall.SIGTERM, 20*time.Second) // rolling replacement: drain, stop, deregister
				replaced++
			}
		}
	}
	wg.Wait()
	take()

	fmt.Printf("soak: %v, %d instances, %d GET + %d POST clients; %d replaced (drain), %d SIGKILLed\n",
		time.Since(began).Round(time.Second), n, getters, posters, replaced, killed)
	fmt.Printf("requests: %d GETs (%d failed), %d POSTs (%d failed)\n", gets.Load(), getFails.Load(), posts.Load(), postFails.Load())
	if v := firstErr.Load(); v != nil {
		fmt.Printf("first GET failure: %v\n", v)
	}
	fmt.Println("| at | agent RSS (MiB) | goroutines |")
	fmt.Println("|---|---|---|")
	maxRSS := 0
	for _, s := range samples {
		fmt.Printf("| %v | %.1f | %d |\n", s.at, float64(s.rssKiB)/1024, s.goroutines)
		maxRSS = max(maxRSS, s.rssKiB)
	}
	first, last := samples[0], samples[len(samples)-1]
	fmt.Printf("memory: %.1f MiB at start, %.1f MiB at end, %.1f MiB max; goroutines %d → %d\n",
		float64(first.rssKiB)/1024, float64(last.rssKiB)/1024, float64(maxRSS)/1024, first.goroutines, last.goroutines)
	return nil
}

// killApp SIGKILLs the app a registrar wrapped (its registrar then
// deregisters and exits, as a crash under a supervisor would look).
func killApp(p *testproc.Proc) {
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.Cmd.Process.Pid, p.Cmd.Process.Pid))
	for _, f := range strings.Fields(string(children)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	go func() {
		select {
		case <-p.Done:
		case <-time.After(20 * time.Second):
			p.Stop(syscall.SIGKILL, 20*time.Second)
		}
	}()
}

func status(r *http.Response) string {
	if r == nil {
		return ""
	}
	return r.Status
}

func rss(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}

func goroutines(c *http.Client, admin string) int {
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
