package handles

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tpde/tpde/core/errs"
)

func TestPutGetTake(t *testing.T) {
	tab := New[string]("thing")
	h := tab.Put("a")
	if h == 0 {
		t.Fatal("handle 0")
	}
	if v, err := tab.Get(h); err != nil || v != "a" {
		t.Fatalf("Get: %q, %v", v, err)
	}
	if v, err := tab.Take(h); err != nil || v != "a" {
		t.Fatalf("Take: %q, %v", v, err)
	}
	_, err := tab.Get(h)
	if !errors.Is(err, errs.Invalid) || err.Error() != fmt.Sprintf("invalid argument: thing handle %d is not open", h) {
		t.Fatalf("Get after Take: %v", err)
	}
	if _, err := tab.Take(h); !errors.Is(err, errs.Invalid) {
		t.Fatalf("second Take: %v", err)
	}
}

func TestHandlesAreUniqueAcrossTables(t *testing.T) {
	a, b := New[int]("a"), New[int]("b")
	ha := a.Put(1)
	if _, err := b.Get(ha); err == nil {
		t.Fatal("a handle of one table opened another's object")
	}
	if hb := b.Put(2); hb == ha {
		t.Fatal("two tables gave the same handle")
	}
}

func TestConcurrentTakeGivesTheObjectOnce(t *testing.T) {
	tab := New[int]("x")
	for round := 0; round < 100; round++ {
		h := tab.Put(round)
		var wg sync.WaitGroup
		var mu sync.Mutex
		got := 0
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := tab.Take(h); err == nil {
					mu.Lock()
					got++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if got != 1 {
			t.Fatalf("round %d: %d takers got the object", round, got)
		}
	}
	if tab.Len() != 0 {
		t.Fatalf("%d handles left", tab.Len())
	}
}
