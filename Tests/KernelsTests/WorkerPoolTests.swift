import Dispatch
import Synchronization
import XCTest

@testable import HydraKernelsCPU

/// The cpu kernels' thread pool: every task exactly once, on several threads, nested and concurrent
/// calls, and workers that stop with their pool.
final class WorkerPoolTests: XCTestCase {
  func testEveryTaskRunsExactlyOnce() {
    for threads in testThreads + [7] {
      let pool = WorkerPool(threads: threads)
      defer { pool.shutdown() }
      for tasks in [0, 1, 2, 3, 5, 64, 1000] {
        let counts = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: max(tasks, 1))
        for i in 0..<tasks { (counts + i).initialize(to: Atomic(0)) }
        // Many calls in a row: workers go from one generation to the next without sleeping.
        for _ in 0..<50 { pool.run(tasks: tasks) { i in counts[i].add(1, ordering: .relaxed) } }
        for i in 0..<tasks {
          XCTAssertEqual(counts[i].load(ordering: .relaxed), 50, "threads \(threads) tasks \(tasks): task \(i)")
        }
        counts.deinitialize(count: tasks)
        counts.deallocate()
      }
    }
  }

  /// Calls of alternating task counts, back to back: a worker that read the task counter at the end
  /// of one call must never take a task once the next call has begun (a stale take used to pass the
  /// bounds check against the next call's larger count, run a task of that call outside its count,
  /// and let `run` return before its tasks were done: a rare crash of the 8-model job).
  func testNoTaskOfTheNextCallIsTakenLate() {
    let calls = Int(ProcessInfo.processInfo.environment["HYDRA_POOL_STRESS_CALLS"] ?? "") ?? 200_000
    for threads in [2, 3] {
      let pool = WorkerPool(threads: threads)
      defer { pool.shutdown() }
      let counts = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: 64)
      for i in 0..<64 { (counts + i).initialize(to: Atomic(0)) }
      defer {
        counts.deinitialize(count: 64)
        counts.deallocate()
      }
      var wrong = 0
      for call in 0..<calls {
        let tasks = call % 2 == 0 ? 2 : 64
        pool.run(tasks: tasks) { i in counts[i].add(1, ordering: .relaxed) }
        // Every task of this call ran once, and had finished when `run` returned.
        for i in 0..<tasks where counts[i].exchange(0, ordering: .relaxed) != 1 { wrong += 1 }
        if wrong > 0 { break }
      }
      XCTAssertEqual(wrong, 0, "threads \(threads): a task ran twice, or was not done when run returned")
    }
  }

  func testTasksRunOnSeveralThreads() {
    let pool = WorkerPool(threads: 2)
    defer { pool.shutdown() }
    let caller = pthread_self()
    let elsewhere = Atomic<Int>(0)
    // Tasks long enough that the worker, woken or spinning, takes some of them.
    for _ in 0..<20 {
      pool.run(tasks: 8) { _ in
        if pthread_equal(pthread_self(), caller) == 0 { elsewhere.add(1, ordering: .relaxed) }
        let end = DispatchTime.now().uptimeNanoseconds + 200_000
        while DispatchTime.now().uptimeNanoseconds < end {}
      }
    }
    XCTAssertGreaterThan(elsewhere.load(ordering: .relaxed), 0, "no task ran on the worker")
  }

  /// A task that calls `run` again runs the inner tasks itself (the pool is busy): no deadlock.
  func testNestedCallsRunOnTheCaller() {
    let pool = WorkerPool(threads: 3)
    defer { pool.shutdown() }
    let total = Atomic<Int>(0)
    pool.run(tasks: 6) { _ in pool.run(tasks: 10) { i in total.add(i, ordering: .relaxed) } }
    XCTAssertEqual(total.load(ordering: .relaxed), 6 * 45)
  }

  func testConcurrentCallersEachRunAllTheirTasks() {
    let pool = WorkerPool(threads: 2)
    defer { pool.shutdown() }
    let total = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: 4) { _ in
      for _ in 0..<200 { pool.run(tasks: 5) { i in total.add(i + 1, ordering: .relaxed) } }
    }
    XCTAssertEqual(total.load(ordering: .relaxed), 4 * 200 * 15)
  }

  /// Workers that have gone to sleep wake up for the next call; kernels instances that go away
  /// take their workers with them (thousands of instances, as tests and the runtime create them).
  func testSleepingWorkersWakeAndInstancesStopTheirWorkers() {
    let pool = WorkerPool(threads: 4)
    let total = Atomic<Int>(0)
    pool.run(tasks: 4) { _ in total.add(1, ordering: .relaxed) }
    usleep(UInt32(2 * WorkerPool.spinNanoseconds / 1000) + 20_000)
    pool.run(tasks: 4) { _ in total.add(1, ordering: .relaxed) }
    XCTAssertEqual(total.load(ordering: .relaxed), 8)
    pool.shutdown()
    let x = Buf(count: 1 << 17)
    for _ in 0..<2000 {
      let k = CPUKernels(threads: 3)
      k.fill(x.p, value: 1, count: x.count)
    }
    XCTAssertEqual(x.array.last, 1)
  }
}

/// The cut of products is a rule of the shapes: pinned here, since the bits of every product
/// depend on it.
final class ProductSplitTests: XCTestCase {
  func testProductsAreCutByShapeAlone() {
    typealias S = CPUKernels.ProductSplit
    // Small: one piece.
    XCTAssertEqual(CPUKernels.productSplit(m: 64, n: 64, k: 64), S(alongRows: true, size: 64, count: 1))
    // A GPT layer at 1024 rows: the qkv product in 5 pieces of 256 columns; the MLP's second, whose
    // k = 1536 is the longest, in 4 pieces of 256 rows, each in 2 pieces of k (C has 393216 floats:
    // room in 2^19 of scratch for one partial product only).
    XCTAssertEqual(CPUKernels.productSplit(m: 1024, n: 1152, k: 384), S(alongRows: false, size: 256, count: 5))
    XCTAssertEqual(
      CPUKernels.productSplit(m: 1024, n: 384, k: 1536), S(alongRows: true, size: 256, count: 4, kSize: 768, kCount: 2))
    // Many rows: at most 64 pieces.
    XCTAssertEqual(CPUKernels.productSplit(m: 32768, n: 768, k: 768), S(alongRows: true, size: 512, count: 64))
    // Weight gradients (k = the batch's rows, the longest): cut along k into pieces of 256 or more,
    // then C into the pieces still short of 16. d_model 128 at 1024 rows: C is one piece of 128
    // rows, k four of 256.
    XCTAssertEqual(
      CPUKernels.productSplit(m: 128, n: 128, k: 1024), S(alongRows: true, size: 128, count: 1, kSize: 256, kCount: 4))
    // d_model 384: k in 4 (3 partial products of 147456 floats fit in 2^19), C's 384 rows in
    // 256 + 128 (16 / 4 = 4 wanted, but no piece under 256).
    XCTAssertEqual(
      CPUKernels.productSplit(m: 384, n: 384, k: 1024), S(alongRows: true, size: 256, count: 2, kSize: 256, kCount: 4))
    // The qkv gradient of d_model 384: n = 1152 is longer than k = 1024, so C alone is cut.
    XCTAssertEqual(CPUKernels.productSplit(m: 384, n: 1152, k: 1024), S(alongRows: false, size: 256, count: 5))
    // GPT-2 small at 4096 rows: C of 768 x 768 leaves no room for a partial product, so C alone is
    // cut, as for 768 x 3072.
    XCTAssertEqual(CPUKernels.productSplit(m: 768, n: 768, k: 4096), S(alongRows: true, size: 256, count: 3))
    XCTAssertEqual(CPUKernels.productSplit(m: 768, n: 3072, k: 4096), S(alongRows: false, size: 256, count: 12))
    // Batched products keep k whole.
    XCTAssertEqual(
      CPUKernels.productSplit(m: 128, n: 128, k: 1024, alongK: false), S(alongRows: true, size: 128, count: 1))
  }
}
