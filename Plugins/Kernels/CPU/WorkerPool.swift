import Dispatch
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// The threads of one `cpu` device: the caller and `threads - 1` workers started once, kept for the
/// device's lifetime, and handed numbered tasks by `run`.
///
/// Which thread runs which task is decided at run time (a shared counter), so a task must write
/// outputs that no other task of the same call touches, and compute them the same way whoever runs
/// it: then the results cannot depend on the number of threads or on timing. The caller waits only
/// for tasks a worker has taken, never for a worker to show up: a worker that the operating system
/// has not scheduled yet (a loaded or oversubscribed machine) leaves its tasks to the others.
///
/// `run` allocates nothing: the tasks' closure is borrowed for the call, not copied to the heap.
/// A second caller arriving while the workers are busy (two devices sharing one instance, or a task
/// that itself calls `run`) runs its tasks on its own thread, with the same results.
///
/// Idle workers spin for a short while (kernel calls follow each other within microseconds in a
/// training step), yielding the processor, then sleep on a condition variable.
final class WorkerPool: @unchecked Sendable {
  let threads: Int

  /// (generation << 16) | participants of the current call, published by `run`.
  private let state = Atomic<Int>(0)
  /// (generation << 32) | the next task to take, so that a worker late for a call can never take a
  /// task of the next one.
  private let nextTask = Atomic<Int>(0)
  /// Tasks of the current call finished.
  private let finished = Atomic<Int>(0)
  private let sleepers = Atomic<Int>(0)
  private let busy = Atomic<Bool>(false)
  private let stopping = Atomic<Bool>(false)

  /// Tasks of the current call: stored (releasing) after `nextTask` is closed, so that a worker that
  /// reads it (acquiring) can no longer take a task of an earlier call (see `work`).
  private let taskCount = Atomic<Int>(0)
  // Written by the caller before it publishes a generation, read by that generation's workers.
  private var body: ((Int) -> Void)?

  private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
  private var workers: [pthread_t] = []

  /// How long an idle worker looks for work before it sleeps.
  static let spinNanoseconds: UInt64 = 100_000

  init(threads: Int) {
    precondition(threads >= 1 && threads < 1 << 15, "threads must be in 1..<32768")
    self.threads = threads
    pthread_mutex_init(lock, nil)
    pthread_cond_init(wake, nil)
    for index in 1..<threads {
      let start = Unmanaged.passRetained(WorkerStart(pool: self, index: index)).toOpaque()
      var thread = pthread_t()
      let rc = pthread_create(
        &thread, nil,
        { raw in
          let start = Unmanaged<WorkerStart>.fromOpaque(raw!).takeRetainedValue()
          start.pool.workerLoop(index: start.index)
          return nil
        }, start)
      precondition(rc == 0, "cpu kernels: cannot start a worker thread (pthread_create: \(rc))")
      workers.append(thread)
    }
  }

  /// Stops and joins the workers. The pool is unusable afterwards.
  func shutdown() {
    guard !stopping.exchange(true, ordering: .sequentiallyConsistent) else { return }
    pthread_mutex_lock(lock)
    state.add(1 << 16, ordering: .sequentiallyConsistent)
    pthread_cond_broadcast(wake)
    pthread_mutex_unlock(lock)
    for thread in workers { pthread_join(thread, nil) }
    workers = []
    pthread_cond_destroy(wake)
    pthread_mutex_destroy(lock)
    wake.deallocate()
    lock.deallocate()
  }

  /// Runs `body(0) ..< body(tasks - 1)`, each exactly once, over the pool's threads (the caller's
  /// included), and returns when all have finished.
  func run(tasks: Int, _ body: (Int) -> Void) {
    if tasks <= 0 { return }
    let participants = Swift.min(threads, tasks)
    if participants <= 1 || tasks >= Self.closed
      || !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
    {
      for i in 0..<tasks { body(i) }
      return
    }
    withoutActuallyEscaping(body) { body in
      // Close the last call's counter before anything of this call is written: a worker still in
      // that call may have read its counter at the end (every task taken) and be about to compare
      // it with `taskCount`. Without this it could find this call's larger count there, take the
      // last call's counter one further (still unchanged) and run a task of this call outside its
      // count, which also let `run` return before every task was done.
      let last = state.load(ordering: .relaxed) >> 16
      nextTask.store(last << 32 | Self.closed, ordering: .sequentiallyConsistent)
      self.body = body
      taskCount.store(tasks, ordering: .releasing)
      // Generations wrap at 2^30 so that (generation << 32) never overflows.
      let generation = (last + 1) & (1 << 30 - 1)
      finished.store(0, ordering: .relaxed)
      nextTask.store(generation << 32, ordering: .relaxed)
      state.store(generation << 16 | participants, ordering: .sequentiallyConsistent)
      if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
        pthread_mutex_lock(lock)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(lock)
      }
      work(generation: generation)
      var spins = 0
      while finished.load(ordering: .acquiring) < tasks {
        spins += 1
        if spins > 64 { sched_yield() }
      }
      // The closure must not outlive this call (withoutActuallyEscaping checks it).
      self.body = nil
    }
    busy.store(false, ordering: .releasing)
  }

  /// The task index of a closed counter: above every task count (`run` takes fewer than 2^32 - 1).
  static let closed = 0xFFFF_FFFF

  /// Takes tasks of call `generation` until none is left (or that call is over).
  private func work(generation: Int) {
    while true {
      var taken = nextTask.load(ordering: .acquiring)
      while true {
        // Another call, or none left. `taskCount` may already be the next call's; but that call
        // closed this counter before storing it, so the exchange below then fails.
        if taken >> 32 != generation || taken & 0xFFFF_FFFF >= taskCount.load(ordering: .acquiring) { return }
        let (exchanged, original) = nextTask.compareExchange(
          expected: taken, desired: taken + 1, ordering: .acquiringAndReleasing)
        if exchanged { break }
        taken = original
      }
      runTask(taken & 0xFFFF_FFFF)
      finished.add(1, ordering: .releasing)
    }
  }

  /// Not inlined: the closure's retain and release stay inside, before the task counts as finished.
  @inline(never)
  private func runTask(_ i: Int) {
    body?(i)
  }

  private func workerLoop(index: Int) {
    var seen = 0
    while true {
      let current = waitForCall(after: seen)
      if stopping.load(ordering: .acquiring) { return }
      seen = current >> 16
      if index < current & 0xFFFF { work(generation: seen) }
    }
  }

  /// The state of the first call published after generation `seen` (or of the shutdown).
  private func waitForCall(after seen: Int) -> Int {
    var spins = 0
    var spinStart: UInt64 = 0
    while true {
      let current = state.load(ordering: .sequentiallyConsistent)
      if current >> 16 != seen || stopping.load(ordering: .relaxed) { return current }
      spins += 1
      if spins < 256 { continue }
      let now = DispatchTime.now().uptimeNanoseconds
      if spinStart == 0 { spinStart = now }
      if now - spinStart < Self.spinNanoseconds {
        sched_yield()
        continue
      }
      pthread_mutex_lock(lock)
      sleepers.add(1, ordering: .sequentiallyConsistent)
      while state.load(ordering: .sequentiallyConsistent) >> 16 == seen && !stopping.load(ordering: .relaxed) {
        pthread_cond_wait(wake, lock)
      }
      sleepers.subtract(1, ordering: .sequentiallyConsistent)
      pthread_mutex_unlock(lock)
      spins = 0
      spinStart = 0
    }
  }
}

/// What a new worker thread is handed.
private final class WorkerStart {
  let pool: WorkerPool
  let index: Int
  init(pool: WorkerPool, index: Int) {
    self.pool = pool
    self.index = index
  }
}
