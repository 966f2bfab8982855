import Foundation
import XCTest

@testable import HydraPluginAPI

/// The pages of large tensor buffers are kept for reuse within a bound: kept + live bytes never
/// exceed the most live bytes ever held. Checked against sizes tracked here, independently.
final class MappedBuffersTests: XCTestCase {
  private let page = Int(sysconf(Int32(_SC_PAGESIZE)))
  private func rounded(_ n: Int) -> Int { (n + page - 1) / page * page }

  func testAFreedBufferComesBackZeroedForTheSameSize() {
    let cache = MappedBuffers()
    let bytes = 1 << 20
    let a = cache.take(bytes, zeroed: true)
    a.initializeMemory(as: UInt8.self, repeating: 7, count: bytes)
    cache.give(a, bytes)
    // A size that rounds to the same pages takes the same buffer, zeroed again.
    let b = cache.take(bytes - 100, zeroed: true)
    XCTAssertEqual(a, b, "the kept buffer is reused")
    let bytesB = UnsafeRawBufferPointer(start: b, count: bytes - 100)
    XCTAssertTrue(bytesB.allSatisfy { $0 == 0 }, "a reused buffer asked for zeroed is zero")
    let stats = cache.statistics
    XCTAssertEqual(stats.reused, 1)
    XCTAssertEqual(stats.mapped, 1)
    XCTAssertEqual(stats.liveBytes, bytes)
    XCTAssertEqual(stats.keptBytes, 0)
    cache.give(b, bytes - 100)
    cache.trim()
    XCTAssertEqual(cache.statistics.keptBytes, 0)
  }

  /// Pages of `bytes` at `p` that are resident (mincore), counted.
  private func residentPages(_ p: UnsafeMutableRawPointer, _ bytes: Int) -> Int {
    let pages = (bytes + page - 1) / page
    var vec = [UInt8](repeating: 0, count: pages)
    XCTAssertEqual(mincore(p, bytes, &vec), 0)
    return vec.filter { $0 & 1 == 1 }.count
  }

  func testBuffersMappedInADeferringBlockAreFaultedInWhenItEnds() throws {
    // Two threads at once (ranks as threads build models together), 3 buffers each, one of them
    // large enough to be cut into pieces.
    let cache = MappedBuffers()
    let sizes = [1 << 20, 9 << 20, (256 << 10) + 3]
    // One slot per thread, written by that thread only.
    let before = UnsafeMutableBufferPointer<[Int]>.allocate(capacity: 2)
    let buffers = UnsafeMutableBufferPointer<[UnsafeMutableRawPointer]>.allocate(capacity: 2)
    _ = before.initialize(from: [[], []])
    _ = buffers.initialize(from: [[], []])
    defer {
      before.deallocate()
      buffers.deallocate()
    }
    DispatchQueue.concurrentPerform(iterations: 2) { t in
      buffers[t] = cache.deferringPopulation {
        let made = sizes.map { cache.take($0, zeroed: true) }
        before[t] = zip(made, sizes).map { residentPages($0, $1) }
        return made
      }
    }
    for t in 0..<2 {
      // Inside the block nothing was faulted in; after it every page is, and reads zero.
      XCTAssertEqual(before[t], [0, 0, 0], "thread \(t)")
      for (p, bytes) in zip(buffers[t], sizes) {
        XCTAssertEqual(residentPages(p, bytes), (bytes + page - 1) / page)
        XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: bytes).allSatisfy { $0 == 0 })
        cache.give(p, bytes)
      }
    }
    // Outside a block a buffer is faulted in at once.
    let q = cache.take(1 << 20, zeroed: true)
    XCTAssertEqual(residentPages(q, 1 << 20), (1 << 20) / page)
    cache.give(q, 1 << 20)
    cache.trim()
  }

  func testKeptAndLiveBytesStayWithinThePeakOfLiveBytes() {
    let cache = MappedBuffers()
    var rng = SplitMix64(seed: 11)
    let sizes = [256 << 10, (300 << 10) + 5, 1 << 20, 3 << 20]
    var live: [(UnsafeMutableRawPointer, Int)] = []
    var liveBytes = 0
    var peak = 0
    for step in 0..<2_000 {
      if live.isEmpty || (rng.nextInt(below: 5) < 3 && live.count < 12) {
        let n = sizes[rng.nextInt(below: sizes.count)]
        let p = cache.take(n, zeroed: step % 2 == 0)
        if step % 2 == 0 {
          XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: n).allSatisfy { $0 == 0 }, "step \(step)")
        }
        // Every live buffer is written whole: two live buffers sharing pages would show here.
        p.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: step), count: n)
        live.append((p, n))
        liveBytes += rounded(n)
        peak = max(peak, liveBytes)
      } else {
        let (p, n) = live.remove(at: rng.nextInt(below: live.count))
        cache.give(p, n)
        liveBytes -= rounded(n)
      }
      let s = cache.statistics
      XCTAssertEqual(s.liveBytes, liveBytes, "step \(step)")
      XCTAssertEqual(s.peakLiveBytes, peak, "step \(step)")
      XCTAssertLessThanOrEqual(s.liveBytes + s.keptBytes, peak, "step \(step)")
    }
    for (p, n) in live { cache.give(p, n) }
    let s = cache.statistics
    XCTAssertGreaterThan(s.reused, s.mapped, "most buffers come from kept pages")
    XCTAssertEqual(s.liveBytes, 0)
    XCTAssertLessThanOrEqual(s.keptBytes, peak)
    cache.trim()
  }

  /// A size no kept buffer has takes the head of a larger kept one (the tail stays kept), or
  /// carries the pages of the largest smaller one (mremap) and maps only the rest: no page that
  /// was faulted in is given up for a fresh one while it can serve.
  func testASizeNoKeptBufferHasReusesTheKeptPagesOfAnother() {
    let cache = MappedBuffers()
    let mib = 1 << 20
    let big = cache.take(4 * mib, zeroed: false)
    big.initializeMemory(as: UInt8.self, repeating: 7, count: 4 * mib)
    cache.give(big, 4 * mib)
    // The head of the 4 MiB buffer, zeroed as asked; its last 3 MiB stay kept.
    let head = cache.take(mib, zeroed: true)
    XCTAssertEqual(head, big)
    XCTAssertTrue(UnsafeRawBufferPointer(start: head, count: mib).allSatisfy { $0 == 0 })
    var s = cache.statistics
    XCTAssertEqual([s.mapped, s.reused, s.mappedBytes, s.liveBytes, s.keptBytes], [1, 1, 4 * mib, mib, 3 * mib])
    cache.give(head, mib)
    // 8 MiB: the 3 MiB tail grows (its bytes carried: not zeroed, they still read 7), the 1 MiB
    // head is unmapped to stay under the bound, and 5 MiB are mapped afresh.
    let grown = cache.take(8 * mib, zeroed: false)
    let bytes = UnsafeRawBufferPointer(start: grown, count: 8 * mib)
    XCTAssertTrue(bytes[0..<(3 * mib)].allSatisfy { $0 == 7 }, "the kept pages were carried")
    XCTAssertTrue(bytes[(3 * mib)...].allSatisfy { $0 == 0 }, "the new pages are zero")
    s = cache.statistics
    XCTAssertEqual([s.mapped, s.reused, s.mappedBytes, s.liveBytes, s.keptBytes], [2, 2, 9 * mib, 8 * mib, 0])
    cache.give(grown, 8 * mib)
    // Asked zeroed, a grown buffer is zero through the carried part too.
    let again = cache.take(8 * mib, zeroed: true)
    XCTAssertTrue(UnsafeRawBufferPointer(start: again, count: 8 * mib).allSatisfy { $0 == 0 })
    cache.give(again, 8 * mib)
    cache.trim()
  }

  /// Through `Tensor`: a large tensor allocated where a freed one was reads zero.
  func testATensorReusingPagesStartsAtZero() throws {
    let count = 1 << 18  // 1 MiB
    let before = MappedBuffers.shared.statistics.reused
    do {
      let t = try Tensor(shape: [count])
      t.data.update(repeating: 3, count: count)
    }
    let u = try Tensor(shape: [count])
    XCTAssertGreaterThan(MappedBuffers.shared.statistics.reused, before)
    XCTAssertTrue(u.buffer.allSatisfy { $0 == 0 })
  }
}

/// A parked tensor (a gradient between two backwards) holds no bytes but keeps its charge, so that
/// a device's accounting never changes under a task; the charge moves with it and goes with it.
final class TensorParkingTests: XCTestCase {
  func testAParkedTensorKeepsItsChargeAndComesBackZero() throws {
    let device = DeviceMemory(budget: 16 << 20, label: "device")
    let other = DeviceMemory(budget: 16 << 20, label: "other")
    let count = 1 << 18  // 1 MiB: kept pages
    let t = try Tensor(shape: [count], memory: device)
    t.data.update(repeating: 5, count: count)
    t.park()
    XCTAssertTrue(t.isParked)
    XCTAssertFalse(t.isResident)
    XCTAssertEqual(device.used, count * 4, "the charge stays")
    t.unpark()
    XCTAssertTrue(t.buffer.allSatisfy { $0 == 0 }, "unparked, it is zero")
    XCTAssertEqual(device.used, count * 4)
    t.park()
    try t.move(to: other)
    XCTAssertEqual([device.used, other.used], [0, count * 4], "a move takes the charge along")
    XCTAssertTrue(t.isParked)
    try t.evict(to: nil, offset: 0)
    XCTAssertEqual(other.used, 0, "evicted, it is charged nowhere")
    XCTAssertFalse(t.isParked)
    try t.restoreParked(memory: device)
    XCTAssertEqual(device.used, count * 4)
    XCTAssertTrue(t.isParked)
    // Parked from the start, and dropped while parked: the charge goes with it.
    do {
      let u = try Tensor(parkedShape: [count], memory: other)
      XCTAssertEqual(other.used, count * 4)
      XCTAssertTrue(u.isParked)
    }
    XCTAssertEqual(other.used, 0)
    // No room: a parked restore throws and charges nothing.
    let small = DeviceMemory(budget: 1024, label: "small")
    try t.evict(to: nil, offset: 0)
    XCTAssertThrowsError(try t.restoreParked(memory: small))
    XCTAssertEqual(small.used, 0)
    XCTAssertFalse(t.isParked)
  }
}
