package cli

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// logWriter buffers serve's log lines and writes them out every
// logFlushInterval, or sooner when the buffer fills. The gateway logs a
// line per request; a write system call for each would cost more than
// the rest of the gateway's own work on a request.
type logWriter struct {
	mu   sync.Mutex
	bw   *bufio.Writer
	done chan struct{}
	wg   sync.WaitGroup
}

const (
	logFlushInterval = 50 * time.Millisecond
	logBufferSize    = 64 << 10
)

func newLogWriter(w io.Writer) *logWriter {
	l := &logWriter{bw: bufio.NewWriterSize(w, logBufferSize), done: make(chan struct{})}
	l.wg.Add(1)
	go l.run()
	return l
}

// Write implements io.Writer. slog writes each record with one call, so
// lines are never split between flushes.
func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bw.Write(p)
}

func (l *logWriter) run() {
	defer l.wg.Done()
	t := time.NewTicker(logFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			l.flush()
		}
	}
}

func (l *logWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bw.Flush()
}

// Close writes out what is buffered and stops the flusher.
func (l *logWriter) Close() error {
	close(l.done)
	l.wg.Wait()
	l.flush()
	return nil
}
