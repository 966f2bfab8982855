import Foundation
import HydraBackendSHM
import HydraCore
import HydraKernelsReference
import HydraRuntime
import XCTest

/// Never asked for a batch: these tests only move shard state.
private final class NoData: BatchSource {
  func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch { fatalError("no data") }
  func validationBatches(batchSize: Int, limit: Int?) -> [Batch] { [] }
}

/// Shard state leaving this process and coming back (what the `mpi` backend does when a shard's home
/// moves, or rank 0 gathers a model), from RAM and from the disk tier: the bytes must survive exactly.
final class HostStoreTests: XCTestCase {
  func makeRun(hostBudget: Int, folder: String) throws -> (ModelRun, HostStore) {
    let store = HostStore(budget: hostBudget, folder: folder)
    let device = DeviceMemory(budget: .max, label: "device 0")
    store.attach(device: 0, memory: device)
    let spec = ModelSpec.gpt(GPTShape(layers: 2, channels: 16, heads: 2, context: 8, vocab: 64))
    let run = try ModelRun(
      index: 0, id: "m000", spec: spec, seed: 7,
      settings: TrainSettings(steps: 1, batchSize: 2, optimizer: Optimizer(kind: .adamw, lr: 1e-3, totalSteps: 1)),
      data: NoData(), shards: [0..<1, 1..<3, 3..<4], backend: SharedMemoryBackend(devices: 1), store: store)
    return (run, store)
  }

  func bytes(_ run: ModelRun, _ shard: Int, valuesOnly: Bool = false) throws -> [UInt8] {
    let packed = try run.packState(of: shard, valuesOnly: valuesOnly)
    return Array(UnsafeRawBufferPointer(start: packed.data, count: packed.byteCount))
  }

  /// `bytes` as a packed state, as another rank would send it.
  func packed(_ bytes: [UInt8]) throws -> Tensor {
    let t = try Tensor(shape: [bytes.count / 4])
    bytes.withUnsafeBytes { UnsafeMutableRawPointer(t.data).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    return t
  }

  /// The store's RAM holds parameters and optimizer moments, never gradients: they are made (zero)
  /// when a shard reaches a device and freed when it leaves, while the values survive the trip.
  func testGradientsLiveOnDevicesOnlyAndArriveZero() throws {
    let dir = try temporaryFolder()
    let (run, store) = try makeRun(hostBudget: .max, folder: dir + "/spill")
    // Counted from the parameters themselves: value and AdamW's two moments, 4 bytes a number.
    var expected = 0
    for s in run.shards.indices {
      for p in run.parameters(ofShard: s) {
        expected += (p.value.capacity + p.state.reduce(0) { $0 + $1.capacity }) * 4
        XCTAssertFalse(p.grad.isResident, "shard \(s): a gradient in the store's RAM")
      }
    }
    XCTAssertEqual(store.memory.used, expected)
    let before = try bytes(run, 1)
    try run.promote(1, to: 0)
    let gradients = run.parameters(ofShard: 1).map(\.grad)
    let gradientBytes = gradients.reduce(0) { $0 + $1.capacity * 4 }
    XCTAssertGreaterThan(gradientBytes, 0)
    XCTAssertEqual(store.residentOn(device: 0), run.shardStates[1].bytes)
    // Charged to the device, parked: a backward makes them (as ModelRun's does).
    for g in gradients {
      XCTAssertTrue(g.isParked)
      XCTAssertFalse(g.isResident)
      g.unpark()
      XCTAssertTrue(UnsafeBufferPointer(start: g.data, count: g.count).allSatisfy { $0 == 0 })
      g.data.update(repeating: 3, count: g.count)  // a backward's leftovers
    }
    XCTAssertEqual(store.residentOn(device: 0), run.shardStates[1].bytes, "unparking charges nothing more")
    try run.demoteState()
    XCTAssertEqual(store.memory.used, expected, "the gradients came into the store")
    XCTAssertTrue(gradients.allSatisfy { !$0.isResident && !$0.isParked })
    try run.promote(1, to: 0)
    for g in gradients {
      // The pages the leftovers were in are kept for reuse: unparked, they must read zero again.
      g.unpark()
      XCTAssertTrue(UnsafeBufferPointer(start: g.data, count: g.count).allSatisfy { $0 == 0 }, "a gradient came back not zero")
    }
    XCTAssertEqual(try bytes(run, 1), before)
  }

  /// A shard whose task runs (between `beginTask` and `endTask`) stays where it is: a prefetch for
  /// another device (queued before the scheduler chose this one) and a promotion that needs room
  /// on its device leave it alone. On a device with memory of its own, moving it would free the
  /// buffers its kernels are computing on; on the cpu, it charged the wrong device.
  func testAShardInUseByARunningTaskIsNeitherPrefetchedAwayNorSpilled() throws {
    let dir = try temporaryFolder()
    let (run, store) = try makeRun(hostBudget: .max, folder: dir + "/spill")
    let running = run.shardStates[1]
    let device1 = DeviceMemory(budget: running.bytes + run.shardStates[2].bytes - 1, label: "device 1")
    store.attach(device: 1, memory: device1)
    try store.beginTask(running, on: 1, workingSet: DeviceMemory(workingSetOf: device1), bytes: 0)
    XCTAssertEqual(run.residency(of: 1), .device(1))
    store.prefetch(running, to: 0, pinned: [])
    store.drain()
    XCTAssertEqual(run.residency(of: 1), .device(1), "prefetched away while its task runs")
    // Shard 2 fits device 1 only if shard 1 leaves: it must not.
    XCTAssertThrowsError(try store.promote(run.shardStates[2], to: 1))
    XCTAssertEqual(run.residency(of: 1), .device(1), "spilled while its task runs")
    store.endTask(running)
    store.prefetch(running, to: 0, pinned: [])
    store.drain()
    XCTAssertEqual(run.residency(of: 1), .device(0))
  }

  func testReleasedStateComesBackExactlyFromRAMAndFromDisk() throws {
    for budget in [Int.max, 1] {
      let dir = try temporaryFolder()
      let (run, store) = try makeRun(hostBudget: budget, folder: dir + "/spill")
      for s in run.shards.indices {
        // Optimizer state as after some training (not the zeros it starts as).
        try run.promote(s, to: 0)
        for p in run.parameters(ofShard: s) { for t in p.state { t.data.update(repeating: 0.25, count: t.count) } }
        let before = try bytes(run, s)
        XCTAssertEqual(before.count, run.stateBytes(of: s))
        // The parameters themselves, read independently of readState: the first value tensor.
        try run.promote(s, to: 0)
        let first = run.parameters(ofShard: s)[0].value.array
        XCTAssertEqual(
          Array(before.prefix(first.count * 4)), first.withUnsafeBytes { Array($0) }, "readState's layout, shard \(s)")
        let held = store.memory.used
        run.releaseState(of: s)
        XCTAssertEqual(run.residency(of: s), .elsewhere)
        XCTAssertLessThanOrEqual(store.memory.used, held)
        XCTAssertThrowsError(try run.promote(s, to: 0)) { XCTAssertTrue("\($0)".contains("another process"), "\($0)") }
        XCTAssertThrowsError(try bytes(run, s))
        // Back with other bytes (as from another rank that trained it), then with the original ones.
        let other = before.map { $0 &+ 1 }
        try run.unpackState(of: s, from: packed(other))
        XCTAssertNotEqual(run.residency(of: s), .elsewhere)
        XCTAssertEqual(try bytes(run, s), other, "budget \(budget), shard \(s)")
        try run.unpackState(of: s, from: packed(before))
        XCTAssertEqual(try bytes(run, s), before)
        // The values alone: the parameters' values in order, and back into a released shard they
        // come with zero optimizer state (what an evaluation-only gather does).
        let values = try bytes(run, s, valuesOnly: true)
        XCTAssertEqual(values.count, run.stateBytes(of: s, valuesOnly: true))
        // A packed state of another size is refused, and changes nothing.
        XCTAssertThrowsError(try run.unpackState(of: s, from: packed(Array(before.dropLast(4)))))
        XCTAssertEqual(try bytes(run, s), before)
        try run.promote(s, to: 0)
        let expected = run.parameters(ofShard: s).flatMap { p in p.value.array.withUnsafeBytes { Array($0) } }
        XCTAssertEqual(values, expected, "budget \(budget), shard \(s)")
        run.releaseState(of: s)
        try run.unpackState(of: s, from: packed(values), valuesOnly: true)
        let back = try bytes(run, s)
        try run.promote(s, to: 0)
        var offset = 0
        for p in run.parameters(ofShard: s) {
          XCTAssertEqual(Array(back[offset..<offset + p.value.byteCount]), p.value.array.withUnsafeBytes { Array($0) })
          offset += p.value.byteCount
          for t in p.state {
            XCTAssertTrue(back[offset..<offset + t.byteCount].allSatisfy { $0 == 0 }, "optimizer state not zero")
            offset += t.byteCount
          }
        }
        try run.unpackState(of: s, from: packed(before))
        // And it trains from there: promotion works again.
        XCTAssertNoThrow(try run.promote(s, to: 0))
        XCTAssertEqual(
          run.parameters(ofShard: s)[0].value.array.withUnsafeBytes { Array($0) }, Array(before.prefix(first.count * 4))
        )
      }
      if budget == 1 { XCTAssertGreaterThan(store.bytesWritten, 0, "the disk tier was not used") }
      store.removeSpillFiles()
    }
  }

  /// State large enough for the spill file's direct I/O (tensors of 256 KiB and more are whole
  /// mapped pages, each at an aligned offset of the file), with sizes that are not whole pages
  /// (vocab 5001 x 64 floats: 1,280,256 bytes), beside small tensors that go through the page
  /// cache: what comes back from disk, and what a checkpoint reads in place there and in RAM,
  /// are the bytes that went out.
  func testLargeStateSpilledPastThePageCacheComesBackExactly() throws {
    let dir = try temporaryFolder()
    for budget in [1, Int.max] {
      let store = HostStore(budget: budget, folder: dir + "/spill-\(budget == 1 ? "disk" : "ram")")
      store.attach(device: 0, memory: DeviceMemory(budget: .max, label: "device 0"))
      let spec = ModelSpec.gpt(GPTShape(layers: 1, channels: 64, heads: 2, context: 8, vocab: 5001))
      let run = try ModelRun(
        index: 0, id: "m000", spec: spec, seed: 3,
        settings: TrainSettings(steps: 1, batchSize: 2, optimizer: Optimizer(kind: .adamw, lr: 1e-3, totalSteps: 1)),
        data: NoData(), shards: [0..<1, 1..<3], backend: SharedMemoryBackend(devices: 1), store: store)
      XCTAssertGreaterThanOrEqual(run.parameters(ofShard: 0)[0].value.byteCount, 256 << 10)
      XCTAssertNotEqual(run.parameters(ofShard: 0)[0].value.byteCount % 4096, 0)
      var expected: [[UInt8]] = []
      for s in run.shards.indices {
        try run.promote(s, to: 0)
        // Every float its own bit pattern, so that a slot read from the wrong offset shows.
        var k: UInt32 = 1
        for p in run.parameters(ofShard: s) {
          for t in [p.value] + p.state {
            for i in 0..<t.count {
              t.data[i] = Float(bitPattern: 0x3C00_0000 | (k & 0x7F_FFFF))
              k &+= 2_654_435_761
            }
          }
        }
        expected.append(
          run.parameters(ofShard: s).flatMap { p in ([p.value] + p.state).flatMap { t in t.array.withUnsafeBytes { Array($0) } } })
      }
      try run.demoteState()
      if budget == 1 {
        for s in run.shards.indices { XCTAssertEqual(run.residency(of: s), .disk, "shard \(s)") }
        XCTAssertGreaterThan(store.bytesWritten, 0)
      }
      for s in run.shards.indices {
        // Read in place (a checkpoint off the device threads): values, then optimizer state.
        var inPlace: [UInt8] = []
        try run.readStateInPlace(ofShard: s) { _, _, values in inPlace += UnsafeRawBufferPointer(values) }
        let owned = run.parameters(ofShard: s).filter { $0.replicaOf == nil }
        XCTAssertEqual(inPlace.count, owned.reduce(0) { $0 + $1.value.byteCount * (1 + $1.state.count) })
        XCTAssertEqual(try bytes(run, s), expected[s], "packed, budget \(budget), shard \(s)")
        if owned.count == run.parameters(ofShard: s).count {
          XCTAssertEqual(inPlace, expected[s], "read in place, budget \(budget), shard \(s)")
        }
        try run.promote(s, to: 0)
        let back = run.parameters(ofShard: s).flatMap { p in
          ([p.value] + p.state).flatMap { t in t.array.withUnsafeBytes { Array($0) } }
        }
        XCTAssertEqual(back, expected[s], "promoted back, budget \(budget), shard \(s)")
      }
    }
  }
}
