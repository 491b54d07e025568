// Go: a time.Ticker counting in the main goroutine, a TCP listener on a
// loopback port served by goroutines (one per connection), printed as:
//   READY port=P pid=PID   once listening
//   TICK n                 every 100 ms
// A connection gets `count n` (from a goroutine that asks the ticker's
// goroutine over a channel) and is closed.
package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("FAIL listen", err)
		os.Exit(1)
	}
	ask := make(chan chan int)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				fmt.Println("FAIL accept", err)
				os.Exit(1)
			}
			go func(c net.Conn) {
				reply := make(chan int)
				ask <- reply
				fmt.Fprintf(c, "count %d\n", <-reply)
				c.Close()
			}(c)
		}
	}()
	fmt.Printf("READY port=%d pid=%d\n", l.Addr().(*net.TCPAddr).Port, os.Getpid())
	n := 0
	t := time.NewTicker(100 * time.Millisecond)
	for {
		select {
		case <-t.C:
			n++
			fmt.Printf("TICK %d\n", n)
		case reply := <-ask:
			reply <- n
		}
	}
}
