// hydra-pingpong: MPI transfer benchmark and multi-rank self-test.
//
//   mpirun -np 2 hydra-pingpong            raw MPI_Send/MPI_Recv ping-pong vs MPICommunicator's tensor path
//   mpirun -np 2 hydra-pingpong bench --load libucx-transport.so --backend ucx
//                                          the same, plus the backend of a transport plugin, against mpi's
//   mpirun -np N hydra-pingpong selftest   point-to-point, collectives and tag checks on N >= 2 ranks
//   mpirun -np N hydra-pingpong failtest   the last rank fails while the others wait on it: the job
//                                          must end on every rank (MPI_Abort), not hang
import CMPI
import Foundation
import HydraBackendMPI
import HydraCore
import HydraPluginLoader
import HydraRuntime

setvbuf(stdout, nil, _IOLBF, 0)

func fail(_ message: String) -> Never {
  FileHandle.standardError.write(("hydra-pingpong: " + message + "\n").data(using: .utf8)!)
  exit(1)
}

let arguments = Array(CommandLine.arguments.dropFirst())
let command = arguments.first ?? "bench"
guard ["bench", "selftest", "failtest"].contains(command) else {
  fail(
    "unknown command '\(command)'; usage: mpirun -np 2 hydra-pingpong [bench [--load LIB --backend NAME] | selftest | failtest]"
  )
}

/// bench's `--load PATH` (repeatable) and `--backend NAME`: a transport plugin measured beside mpi.
var pluginPaths: [String] = []
var pluginBackend: String?
do {
  var rest = arguments.dropFirst()
  while let option = rest.popFirst() {
    guard command == "bench", ["--load", "--backend"].contains(option), let value = rest.popFirst() else {
      fail("unexpected argument '\(option)'; bench takes --load PATH and --backend NAME")
    }
    if option == "--load" { pluginPaths.append(value) } else { pluginBackend = value }
  }
  if !pluginPaths.isEmpty && pluginBackend == nil { fail("--load needs --backend NAME (the transport to measure)") }
}

let comm: MPICommunicator
do {
  comm = try MPICommunicator.initialize(required: .multiple)
} catch {
  fail("\(error)")
}

guard comm.size >= 2 else {
  comm.finalize()
  fail(
    "needs at least 2 MPI ranks, got \(comm.size); run it as "
      + "`mpirun -np 2 hydra-pingpong\(command == "bench" ? "" : " " + command)`")
}

do {
  switch command {
  case "selftest": try selfTest(comm)
  case "failtest":
    // The last rank fails; everyone else blocks on a message it will never send.
    if comm.rank == comm.size - 1 {
      throw SelfTestFailure(description: "deliberate failure (failtest)")
    }
    var byte: UInt8 = 0
    try withUnsafeMutableBytes(of: &byte) { _ = try comm.receive(into: $0, from: comm.size - 1, tag: 1) }
  default: try pingPong(comm)
  }
} catch {
  FileHandle.standardError.write("rank \(comm.rank): FAILED: \(error)\n".data(using: .utf8)!)
  comm.abort(code: 1)
}
comm.finalize()
exit(0)

// MARK: - ping-pong

func median(_ values: [Double]) -> Double {
  let s = values.sorted()
  return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Round trips between ranks 0 and 1 of `bytes` bytes; returns each round trip's seconds on rank 0
/// (rank 1 returns an empty array).
func rawRoundTrips(_ buffer: UnsafeMutableRawBufferPointer, count: Int, rank: Int) -> [Double] {
  let world = hydra_mpi_comm_world()
  let n = Int32(buffer.count)
  var times: [Double] = []
  for _ in 0..<count {
    if rank == 0 {
      let start = MPI_Wtime()
      MPI_Send(buffer.baseAddress, n, hydra_mpi_byte(), 1, 7, world)
      MPI_Recv(buffer.baseAddress, n, hydra_mpi_byte(), 1, 7, world, hydra_mpi_status_ignore())
      times.append(MPI_Wtime() - start)
    } else if rank == 1 {
      MPI_Recv(buffer.baseAddress, n, hydra_mpi_byte(), 0, 7, world, hydra_mpi_status_ignore())
      MPI_Send(buffer.baseAddress, n, hydra_mpi_byte(), 0, 7, world)
    }
  }
  return times
}

/// The same through the `mpi` backend, as shard tasks move tensors: rank 0 posts an activation for
/// a shard homed on rank 1, whose progress thread receives it (header, then the bytes); rank 1
/// fetches it and posts it back as a gradient.
func backendRoundTrips(_ backend: DistributedRuntime, _ tensor: Tensor, count: Int, first: Int) throws -> [Double] {
  var times: [Double] = []
  for i in first..<(first + count) {
    let out = TransferKey(.activation, model: 0, index: 0, step: i)
    let back = TransferKey(.gradient, model: 0, index: 0, step: i)
    if backend.localDevice == 0 {
      let start = MPI_Wtime()
      try backend.post(tensor, key: out, from: 0, for: 1)
      _ = try backend.fetch(back, to: 0)
      backend.discard(back)
      times.append(MPI_Wtime() - start)
    } else if backend.localDevice == 1 {
      let got = try backend.fetch(out, to: 1)
      backend.discard(out)
      try backend.post(got, key: back, from: 1, for: 0)
    }
  }
  return times
}

/// The same through MPICommunicator's typed tensor path.
func tensorRoundTrips(_ comm: MPICommunicator, _ tensor: Tensor, tag: Int32, count: Int) throws -> [Double] {
  var times: [Double] = []
  for _ in 0..<count {
    if comm.rank == 0 {
      let start = MPI_Wtime()
      try comm.send(tensor, to: 1, tag: tag)
      try comm.receive(into: tensor, from: 1, tag: tag)
      times.append(MPI_Wtime() - start)
    } else if comm.rank == 1 {
      try comm.receive(into: tensor, from: 0, tag: tag)
      try comm.send(tensor, to: 0, tag: tag)
    }
  }
  return times
}

func pingPong(_ comm: MPICommunicator) throws {
  let sizes = [64 << 10, 1 << 20, 16 << 20]
  let tags = try TagSpace(models: 1, shards: 1, upperBound: comm.tagUpperBound)
  let tag = try tags.tag(.user, model: 0, shard: 0, step: 0)
  // The backend's progress thread shares the communicator; the blocking paths use another tag.
  let backend = try DistributedRuntime(transport: try MPITransport(communicator: comm))
  try backend.start(models: 1, shards: 2)
  backend.setHomes(model: 0, [0, 1])
  // A transport plugin's backend, its own ranks joined beside MPI's (the same processes).
  var plugin: DistributedRuntime?
  if let name = pluginBackend {
    let registry = try PluginRegistry { try PluginLoader.load(pluginPaths, into: &$0) }
    guard let made = try registry.makeBackend(name, devices: comm.size) as? DistributedRuntime,
      made.localDevice == comm.rank
    else { throw SelfTestFailure(description: "backend \(name) is not a transport whose ranks are MPI's") }
    try made.start(models: 1, shards: 2)
    made.setHomes(model: 0, [0, 1])
    plugin = made
  }
  let pluginHeader = pluginBackend.map { "  \($0) MiB/s  \($0)/backend" } ?? ""
  if comm.rank == 0 {
    print(
      "hydra-pingpong: \(comm.size) ranks, rank 0 on \(comm.processorName), \(comm.threadLevel); "
        + "bandwidth = 2 x bytes / median round trip")
    print(
      "size      raw MiB/s   tensor MiB/s  backend MiB/s  tensor/raw  backend/raw   raw rtt     backend rtt  round trips"
        + pluginHeader)
  }
  var step = 0
  for size in sizes {
    // Round trips per batch: enough for a stable median, few enough to stay quick at 16 MiB.
    let perBatch = size <= 64 << 10 ? 100 : size <= 1 << 20 ? 30 : 8
    let batches = 3
    let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
    defer { raw.deallocate() }
    raw.initializeMemory(as: UInt8.self, repeating: 0x5A)
    let tensor = try Tensor(shape: [size / MemoryLayout<Float>.stride])
    tensor.buffer.initialize(repeating: 1.5)
    // Warm-up: connections, registration and first-touch of every path.
    _ = rawRoundTrips(raw, count: 3, rank: comm.rank)
    _ = try tensorRoundTrips(comm, tensor, tag: tag, count: 3)
    _ = try backendRoundTrips(backend, tensor, count: 3, first: step)
    if let plugin { _ = try backendRoundTrips(plugin, tensor, count: 3, first: step) }
    step += 3
    // Alternate batches so that every path sees the same load on a shared machine.
    var rawTimes: [Double] = []
    var tensorTimes: [Double] = []
    var backendTimes: [Double] = []
    var pluginTimes: [Double] = []
    for _ in 0..<batches {
      try comm.barrier()
      rawTimes += rawRoundTrips(raw, count: perBatch, rank: comm.rank)
      try comm.barrier()
      tensorTimes += try tensorRoundTrips(comm, tensor, tag: tag, count: perBatch)
      try comm.barrier()
      backendTimes += try backendRoundTrips(backend, tensor, count: perBatch, first: step)
      if let plugin {
        try comm.barrier()
        pluginTimes += try backendRoundTrips(plugin, tensor, count: perBatch, first: step)
      }
      step += perBatch
    }
    if comm.rank == 0 {
      let mib = Double(size) / Double(1 << 20)
      let rawRTT = median(rawTimes)
      let rawBW = 2 * mib / rawRTT
      let tensorBW = 2 * mib / median(tensorTimes)
      let backendRTT = median(backendTimes)
      let backendBW = 2 * mib / backendRTT
      let label = size >= 1 << 20 ? "\(size >> 20) MiB" : "\(size >> 10) KiB"
      print(
        label.padding(toLength: 10, withPad: " ", startingAt: 0)
          + String(
            format: "%9.0f   %12.0f   %12.0f   %8.1f %%   %8.1f %%   %8.1f us   %8.1f us   %d x 3", rawBW, tensorBW,
            backendBW, 100 * tensorBW / rawBW, 100 * backendBW / rawBW, rawRTT * 1e6, backendRTT * 1e6,
            rawTimes.count)
          + (pluginTimes.isEmpty
            ? "" : String(format: "  %12.0f  %10.3f", 2 * mib / median(pluginTimes), backendRTT / median(pluginTimes))))
    }
  }
  if let plugin {
    if comm.rank == 0 { _ = try plugin.finish() } else { try plugin.serve() }
    plugin.close()
  }
  if comm.rank == 0 { _ = try backend.finish() } else { try backend.serve() }
}

// MARK: - self-test

struct SelfTestFailure: Error, CustomStringConvertible {
  let description: String
}

func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
  if !condition { throw SelfTestFailure(description: message()) }
}

/// A value determined by its inputs, over the whole Float bit space (NaN payloads, -0, subnormals):
/// "bit for bit" means exactly that.
@Sendable func pattern(_ a: Int, _ b: Int, _ c: Int, _ i: Int) -> Float {
  var x = UInt64(truncatingIfNeeded: a &* 1_000_003 &+ b &* 10_007 &+ c &* 101 &+ i)
  x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
  x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
  x ^= x >> 31
  return Float(bitPattern: UInt32(truncatingIfNeeded: x))
}

@Sendable func checkBits(_ tensor: Tensor, _ what: String, _ value: (Int) -> Float) throws {
  for i in 0..<tensor.count where tensor.data[i].bitPattern != value(i).bitPattern {
    throw SelfTestFailure(
      description: "\(what): element \(i) is \(String(tensor.data[i].bitPattern, radix: 16)), "
        + "expected \(String(value(i).bitPattern, radix: 16))")
  }
}

func selfTest(_ comm: MPICommunicator) throws {
  let rank = comm.rank
  let size = comm.size
  var checks = 0

  // 1. The tag scheme, on this MPI's MPI_TAG_UB.
  let tags = try TagSpace(models: 64, shards: 16, upperBound: comm.tagUpperBound)
  try TagSpace.selfCheck(layout: tags)
  checks += 1

  // 2. All pairs, non-blocking: every rank sends every other rank a tensor of known values, with a tag
  //    naming (sender, receiver); sizes from a few floats to past the eager limit (rendezvous).
  let elementCounts = [1, 37, 4096, 300_000]
  var sends: [MPIRequest] = []
  var receives: [(MPIRequest, Tensor, Int, Int)] = []
  for peer in 0..<size where peer != rank {
    for (k, n) in elementCounts.enumerated() {
      let outgoing = try Tensor(shape: [n])
      for i in 0..<n { outgoing.data[i] = pattern(rank, peer, k, i) }
      sends.append(
        try comm.isend(outgoing, to: peer, tag: try tags.tag(.activation, model: rank, shard: peer, step: k)))
      let incoming = try Tensor(shape: [n])
      let request = try comm.irecv(
        into: incoming, from: peer, tag: try tags.tag(.activation, model: peer, shard: rank, step: k))
      receives.append((request, incoming, peer, k))
    }
  }
  // Complete the receives in reverse order of posting, then the sends.
  for (request, tensor, peer, k) in receives.reversed() {
    let status = try request.wait()
    try expect(
      status?.source == peer, "all-pairs: message from \(String(describing: status?.source)), expected \(peer)")
    try checkBits(tensor, "all-pairs tensor \(k) from rank \(peer)") { pattern(peer, rank, k, $0) }
  }
  try waitAll(sends)
  checks += 1

  // 3. Collectives.
  let sum = try comm.allreduce(rank + 1, .sum)
  try expect(sum == size * (size + 1) / 2, "allreduce Int sum: \(sum)")
  let maxRank = try comm.allreduce(rank, .max)
  try expect(maxRank == size - 1, "allreduce Int max: \(maxRank)")
  let halves = try comm.allreduce([0.5 * Double(rank), -Double(rank), 1], .sum)
  try expect(
    halves == [0.25 * Double(size * (size - 1)), -Double(size * (size - 1) / 2), Double(size)],
    "allreduce Double sum: \(halves)")
  let dmax = try comm.allreduce(Double(rank) * 1.25, .max)
  try expect(dmax == Double(size - 1) * 1.25, "allreduce Double max: \(dmax)")
  let message = Array("hydra-mpi broadcast from the last rank".utf8)
  let got = try comm.broadcast(rank == size - 1 ? message : [], root: size - 1)
  try expect(got == message, "broadcast: \(got.count) bytes")
  checks += 1

  // 4. Message crossing: every rank sends every other rank `perPeer` small messages whose tags mix
  //    kinds, models, shards and steps (and a few repeated tags, which MPI must deliver in order). The
  //    receiver takes them in a scrambled order: by probing for a chosen (source, tag), and by probing
  //    for anything.
  let perPeer = 240
  struct Planned: Hashable {
    let kind: TagSpace.Kind, model: Int, shard: Int, step: Int, sequence: Int
  }
  func plan(from source: Int, to destination: Int) -> [Planned] {
    var list: [Planned] = []
    var x = UInt64(source * 7919 + destination * 104_729 + 1)
    func next(_ n: Int) -> Int {
      x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Int((x >> 33) % UInt64(n))
    }
    var sequenceByTag: [Int32: Int] = [:]
    for j in 0..<perPeer {
      let kind = TagSpace.Kind.allCases[1 + next(TagSpace.Kind.allCases.count - 1)]
      // Every 10th message repeats an earlier tag: same source and tag must arrive in send order.
      let base = j % 10 == 9 ? list[next(list.count)] : nil
      let p = Planned(
        kind: base?.kind ?? kind, model: base?.model ?? next(tags.maxModels),
        shard: base?.shard ?? next(tags.maxShards),
        step: base?.step ?? next(1 << 20), sequence: 0)
      let tag = try! tags.tag(p.kind, model: p.model, shard: p.shard, step: p.step)
      let sequence = sequenceByTag[tag, default: 0]
      sequenceByTag[tag] = sequence + 1
      list.append(Planned(kind: p.kind, model: p.model, shard: p.shard, step: p.step, sequence: sequence))
    }
    return list
  }
  func payload(_ source: Int, _ p: Planned, _ i: Int) -> Float {
    pattern(source * 31 + p.kind.rawValue, p.model * 4096 + p.shard, p.step * 64 + p.sequence, i)
  }
  func length(_ p: Planned) -> Int { 1 + (p.model * 13 + p.shard * 7 + p.step + p.sequence) % 96 }

  var crossingSends: [MPIRequest] = []
  for peer in 0..<size where peer != rank {
    for p in plan(from: rank, to: peer) {
      let t = try Tensor(shape: [length(p)])
      for i in 0..<t.count { t.data[i] = payload(rank, p, i) }
      crossingSends.append(
        try comm.isend(t, to: peer, tag: try tags.tag(p.kind, model: p.model, shard: p.shard, step: p.step)))
    }
  }
  // What this rank expects, per (source, tag), in send order.
  var expected: [Int: [Int32: [Planned]]] = [:]
  var remaining = 0
  for source in 0..<size where source != rank {
    for p in plan(from: source, to: rank) {
      expected[source, default: [:]][try tags.tag(p.kind, model: p.model, shard: p.shard, step: p.step), default: []]
        .append(p)
      remaining += 1
    }
  }
  var scramble = UInt64(rank + 12_345)
  func pick(_ n: Int) -> Int {
    scramble = scramble &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    return Int((scramble >> 33) % UInt64(n))
  }
  var received = 0
  while remaining > 0 {
    let status: MPIMessageStatus
    if pick(3) == 0 {
      // Anything that has arrived (or wait for the next one).
      status = try comm.iprobe() ?? comm.probe()
    } else {
      // A specific (source, tag) chosen at random among those still owed.
      let sources = expected.keys.filter { !(expected[$0]!.isEmpty) }.sorted()
      let source = sources[pick(sources.count)]
      let tagsOwed = expected[source]!.keys.sorted()
      status = try comm.probe(from: source, tag: tagsOwed[pick(tagsOwed.count)])
    }
    guard var queue = expected[status.source]?[status.tag], !queue.isEmpty else {
      throw SelfTestFailure(description: "crossing: unexpected message \(status)")
    }
    let p = queue.removeFirst()
    if queue.isEmpty {
      expected[status.source]![status.tag] = nil
    } else {
      expected[status.source]![status.tag] = queue
    }
    try expect(
      status.count == length(p) * 4, "crossing: \(status) should hold \(length(p) * 4) bytes for \(p)")
    let t = try Tensor(shape: [length(p)])
    let got = try comm.receive(into: t, from: status.source, tag: status.tag)
    try expect(got == status, "crossing: probed \(status), received \(got)")
    try checkBits(t, "crossing message \(p) from rank \(status.source)") { payload(status.source, p, $0) }
    remaining -= 1
    received += 1
  }
  try waitAll(crossingSends)
  // A rank done here must not start section 5's sends while a neighbour still probes for any tag.
  try comm.barrier()
  checks += 1

  // 5. Threads: with MPI_THREAD_MULTIPLE two threads of each rank exchange with the neighbours at once.
  if comm.threadLevel == .multiple {
    let right = (rank + 1) % size
    let left = (rank + size - 1) % size
    final class FirstError: @unchecked Sendable {
      let lock = NSLock()
      var error: Error?
      func record(_ e: Error) {
        lock.lock()
        if error == nil { error = e }
        lock.unlock()
      }
    }
    let first = FirstError()
    let group = DispatchGroup()
    for lane in 0..<2 {
      DispatchQueue.global().async(group: group) {
        do {
          for step in 0..<50 {
            let tag = try tags.tag(.user, model: lane, shard: 0, step: step)
            let out = try Tensor(shape: [257])
            for i in 0..<257 { out.data[i] = pattern(rank, lane, step, i) }
            let inbox = try Tensor(shape: [257])
            let r = try comm.irecv(into: inbox, from: left, tag: tag)
            let s = try comm.isend(out, to: right, tag: tag)
            try r.wait()
            try s.wait()
            try checkBits(inbox, "thread lane \(lane) step \(step) from rank \(left)") { pattern(left, lane, step, $0) }
          }
        } catch {
          first.record(error)
        }
      }
    }
    group.wait()
    if let error = first.error { throw error }
    checks += 1
  }

  // 6. Errors come back as Swift errors with MPI's message (MPI_ERRORS_RETURN), not as an abort.
  do {
    var byte: UInt8 = 1
    try withUnsafeBytes(of: &byte) { try comm.send($0, to: size + 5, tag: 0) }
    throw SelfTestFailure(description: "sending to rank \(size + 5) did not fail")
  } catch let error as MPIError {
    try expect(error.code != nil && !error.message.isEmpty, "MPIError without MPI's message: \(error)")
    if rank == 0 { print("rank 0: expected error: \(error)") }
  }
  //    A message longer than the receive buffer is MPI's truncation error; the exact-size tensor check
  //    rejects a shorter one.
  let longTag = try tags.tag(.control, model: 1, shard: 1, step: 1)
  if rank == 0 {
    try comm.send(try Tensor(shape: [64]), to: 1, tag: longTag)
    try comm.send(try Tensor(shape: [8]), to: 1, tag: longTag)
  } else if rank == 1 {
    do {
      try comm.receive(into: try Tensor(shape: [16]), from: 0, tag: longTag)
      throw SelfTestFailure(description: "a 256-byte message fitted a 64-byte tensor")
    } catch let error as MPIError {
      try expect(error.code != nil, "truncation should be MPI's error: \(error)")
      print("rank 1: expected error: \(error)")
    }
    do {
      try comm.receive(into: try Tensor(shape: [16]), from: 0, tag: longTag)
      throw SelfTestFailure(description: "a 32-byte message was accepted for a 64-byte tensor")
    } catch let error as MPIError {
      try expect(error.code == nil, "short message should be hydra's error: \(error)")
    }
  }
  checks += 1

  // 7. A request dropped without completing is cancelled, not leaked.
  do {
    let inbox = try Tensor(shape: [4])
    _ = try comm.irecv(into: inbox, from: (rank + 1) % size, tag: try tags.tag(.user, model: 63, shard: 15, step: 15))
  }
  checks += 1

  try comm.barrier()
  print("rank \(rank): ok (\(checks) checks, \(received) crossing messages received, \(comm.processorName), \(tags))")
}
