import Foundation
import HydraCore
import HydraRuntime

/// `mpi`: one device per MPI rank. Every rank builds every model (the same seeds give the same
/// initial state), reads the data set itself, and keeps the state of the shards homed on it in its
/// own host store; rank 0 also runs the coordinator and writes the output folder.
///
/// One thread per rank talks to MPI (`progress`): it starts the sends queued by the other threads,
/// receives every message as it arrives (so a transfer overlaps whatever the rank computes) and
/// carries out the coordinator's requests. The rank's tasks run on one serial queue, as under `shm`.
///
/// Messages, each tagged by `TagSpace` with its kind, model, shard (or tie) and step:
/// - control (rank 0 to a device: run a task, move or send a shard's state, drop a stopped step,
///   stop; a device to rank 0: task done, final report), a few 64-bit words;
/// - tensors (activations, gradients, tied weights, shard states), each a header (step, shape) and
///   then the Float32 bytes under the same tag, pushed by the device that makes them to the device
///   that will use them, never through rank 0.
public final class MPIBackend: DistributedBackend, @unchecked Sendable {
  public let name = "mpi"
  /// The job's communicator (its creator finalizes MPI with it).
  public let communicator: MPICommunicator
  /// The backend's own duplicate of it: the progress thread receives whatever arrives there.
  private let comm: MPICommunicator
  public var deviceCount: Int { communicator.size }
  public var localDevice: Int { communicator.rank }
  public let bandwidth: Double
  /// Ends the job on an error no caller can catch (in a task run for the coordinator, or in MPI
  /// itself): it must print the error and stop every rank. The default aborts with status 1.
  public var onFailure: (Error) -> Void
  /// How long a task waits for a tensor before it reports it lost, and how long the coordinator
  /// waits for a rank's task or step work before it declares the rank stopped and ends the job
  /// (a rank stopped by SIGSTOP, or hung, would otherwise hold every rank for good):
  /// `HYDRA_RANK_TIMEOUT` seconds, default 600.
  public var receiveTimeout: Double =
    Double(ProcessInfo.processInfo.environment["HYDRA_RANK_TIMEOUT"] ?? "").flatMap { $0 > 0 ? $0 : nil } ?? 600
  /// Fault injection, for testing how a job ends when a rank fails in the middle of it:
  /// `HYDRA_MPI_FAULT=<rank>:<tasks>` makes that rank (not 0) fail after running that many tasks.
  private let fault: (rank: Int, after: Int)? = {
    guard let v = ProcessInfo.processInfo.environment["HYDRA_MPI_FAULT"] else { return nil }
    let parts = v.split(separator: ":").compactMap { Int($0) }
    return parts.count == 2 ? (parts[0], parts[1]) : nil
  }()
  private var tasksRun = 0

  private let queue = DispatchQueue(label: "hydra.mpi.device")
  /// Polling MPI for arrivals costs the tasks CPU time (on this machine, 20 us polling made tasks
  /// ~10 % slower); not polling costs latency, which deciding one task ahead hides. The progress
  /// thread polls without pause while a task waits for a tensor; every `pollFast` (default 100 us)
  /// for a while after a message came or went, and when a task sent to another rank is due to
  /// finish; every `pollSlow` (default 2 ms) otherwise. `HYDRA_POLL_FAST_US` and
  /// `HYDRA_POLL_SLOW_US` change them.
  private let pollFast = MPIBackend.microseconds("HYDRA_POLL_FAST_US", 100)
  private let pollSlow = MPIBackend.microseconds("HYDRA_POLL_SLOW_US", 2000)
  /// How long a task waiting for a tensor looks for it before sleeping (`HYDRA_SPIN_US`, 200 us).
  private let spinNanoseconds = MPIBackend.microseconds("HYDRA_SPIN_US", 200)

  private static func microseconds(_ variable: String, _ value: UInt64) -> UInt64 {
    let given = ProcessInfo.processInfo.environment[variable].flatMap { UInt64($0) }
    return min(given ?? value, 1_000_000) * 1000
  }

  private let state = NSCondition()
  // Under `state`:
  /// Tasks blocked on a tensor; until when to poll often; when each remote device's task is due.
  private var waiters = 0
  /// Tasks and step work sent here by the coordinator and not finished: none means the coordinator's
  /// next message is awaited (a worker polls often then).
  private var queued = 0
  private var fastUntil: UInt64 = 0
  private var dueAt: [Int: UInt64] = [:]
  /// Per remote device, its tasks in flight ([model, shard, direction, step]), when the first
  /// started, and how long each kind of task ([model, shard, direction]) took last time.
  private var remoteTasks: [Int: [[Int]]] = [:]
  private var remoteStart: [Int: UInt64] = [:]
  private var remoteSeconds: [[Int]: Double] = [:]
  /// Coordinator: where each model's shards were when its last task was sent (for naming what a
  /// rank that died held).
  private var lastHomes: [Int: [Int]] = [:]
  private var tags: TagSpace?
  private var runs: [ModelRun] = []
  private var device: Device?
  private var store: HostStore?
  private var received: [DataKey: Tensor] = [:]
  /// Tensors that were pushed here for a shard that has moved since: sent on when they arrive.
  private var forwards: [DataKey: Int] = [:]
  private var outbox: [Outgoing] = []
  /// Where each model's shards are, as of the last task of the model run here.
  private var homes: [Int: [Int]] = [:]
  /// Per device, the completions of the tasks sent to it, in order (it runs them in that order).
  private var completions: [Int: [(RemoteOutcome) -> Void]] = [:]
  private var reports: [DeviceReport] = []
  /// Per model, the outcome of the step work a device did for the coordinator: evaluation (if
  /// any: step, loss, accuracy) and seconds.
  private var workResults: [Int: (evaluation: Evaluation?, seconds: Double)] = [:]
  public var stepWork: ((ModelRun, Bool, Bool, Device) throws -> Evaluation?)?
  /// Tensors (and their bytes) this rank sent to other ranks.
  public private(set) var tensorsSent = 0
  public private(set) var bytesSent = 0
  private var stopRequested = false
  private var exitRequested = false
  private var progressThread: Thread?
  private let progressDone = DispatchSemaphore(value: 0)

  struct DataKey: Hashable, CustomStringConvertible {
    var kind: TagSpace.Kind
    var model: Int
    var index: Int
    var step: Int
    var description: String { "\(kind) \(index) of model \(model) at step \(step)" }
  }

  enum Outgoing {
    case control([Int64], to: Int)
    case data(DataKey, Tensor, to: Int)
  }

  enum Op: Int64 {
    case run = 1, done, move, gather, drop, stop, bye, fail, work, workDone, died
  }

  /// Every rank's process id and a hash of its host name, exchanged at the start, so that a rank can
  /// tell which ranks on its own host have died (`diedNeighbours`).
  private var peers: [(pid: Int, host: Int)] = []

  /// Starts MPI (thread level `multiple`: the progress thread and the task queue both use it) and
  /// measures the bandwidth between ranks 0 and 1.
  public static func start() throws -> MPIBackend {
    try MPIBackend(communicator: try MPICommunicator.initialize(required: .multiple))
  }

  public init(communicator: MPICommunicator) throws {
    self.communicator = communicator
    comm = try communicator.duplicate()
    bandwidth = try MPIBackend.measureBandwidth(comm)
    let n = comm.size
    var mine = [Int](repeating: 0, count: 2 * n)
    mine[comm.rank] = Int(getpid())
    mine[n + comm.rank] = MPIBackend.hostHash(communicator.processorName)
    let all = try comm.allreduce(mine, .sum)
    peers = (0..<n).map { (all[$0], all[n + $0]) }
    onFailure = { _ in }
    onFailure = { [unowned self] error in fail("\(error)", code: 1) }
  }

  /// Bytes per second one way between ranks 0 and 1 (4 MiB messages bounced 4 times after one
  /// warm-up), the same on every rank. A single rank has nothing to move to: infinity.
  /// FNV-1a of a host name: the same on every rank (Swift's `Hasher` is seeded per process).
  static func hostHash(_ name: String) -> Int {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in name.utf8 {
      h = (h ^ UInt64(byte)) &* 0x100_0000_01b3
    }
    return Int(bitPattern: UInt(h))
  }

  static func measureBandwidth(_ comm: MPICommunicator) throws -> Double {
    guard comm.size > 1 else { return .infinity }
    let bytes = 4 << 20
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
    defer { buffer.deallocate() }
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    var rate = [0.0]
    try comm.barrier()
    let tag: Int32 = 1
    if comm.rank <= 1 {
      let peer = 1 - comm.rank
      var start = DispatchTime.now().uptimeNanoseconds
      for i in 0..<5 {
        if i == 1 { start = DispatchTime.now().uptimeNanoseconds }
        if comm.rank == 0 {
          try comm.send(UnsafeRawBufferPointer(buffer), to: peer, tag: tag)
          try comm.receive(into: buffer, from: peer, tag: tag)
        } else {
          try comm.receive(into: buffer, from: peer, tag: tag)
          try comm.send(UnsafeRawBufferPointer(buffer), to: peer, tag: tag)
        }
      }
      let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
      rate[0] = Double(2 * 4 * bytes) / max(seconds, 1e-9)
    }
    try rate.withUnsafeMutableBytes { try comm.broadcast($0, root: 0) }
    return rate[0]
  }

  // MARK: Backend

  public func execute(on device: Int, _ work: @escaping () -> Void) {
    precondition(device == localDevice, "mpi: rank \(localDevice) asked to run work of device \(device)")
    let box = Work(run: work)
    queue.async { box.run() }
  }

  public func post(_ tensor: Tensor, key: TransferKey, from device: Int, for consumer: Int) throws {
    let k = dataKey(key)
    state.lock()
    defer { state.unlock() }
    let destination = homes[key.model]?[consumer] ?? localDevice
    if destination == localDevice {
      received[k] = tensor
      state.broadcast()
    } else {
      outbox.append(.data(k, tensor, to: destination))
      state.broadcast()
    }
  }

  public func fetch(_ key: TransferKey, to device: Int) throws -> Tensor {
    try wait(for: dataKey(key), removing: false)
  }

  public func discard(_ key: TransferKey) {
    state.lock()
    received[dataKey(key)] = nil
    state.unlock()
  }

  /// Tensors received (or posted here) and not yet discarded, and tensors waiting to be sent on to
  /// a moved shard: a finished job leaves none.
  public var leftOver: Int {
    state.lock()
    defer { state.unlock() }
    return received.count + forwards.count
  }

  private func dataKey(_ key: TransferKey) -> DataKey {
    let kind: TagSpace.Kind
    switch key.kind {
    case .activation: kind = .activation
    case .gradient: kind = .gradient
    case .tiedValue: kind = .tiedValue
    case .tiedGradient: kind = .tiedGradient
    }
    return DataKey(kind: kind, model: key.model, index: key.index, step: key.step)
  }

  /// Blocks until `key` has arrived; with `removing`, takes it out of the received set.
  private func wait(for key: DataKey, removing: Bool) throws -> Tensor {
    let deadline = Date(timeIntervalSinceNow: receiveTimeout)
    state.lock()
    defer { state.unlock() }
    waiters += 1
    defer { waiters -= 1 }
    if received[key] == nil { state.broadcast() }  // the progress thread: poll fast now
    // Most tensors are on their way: look again for a short while before sleeping, so that the
    // task resumes as soon as it is here rather than after a wake-up.
    let spinUntil = DispatchTime.now().uptimeNanoseconds + spinNanoseconds
    while received[key] == nil && DispatchTime.now().uptimeNanoseconds < spinUntil {
      state.unlock()
      sched_yield()
      state.lock()
    }
    while received[key] == nil {
      if !state.wait(until: deadline) && received[key] == nil {
        throw RuntimeError(
          "mpi: rank \(localDevice) waited \(Int(receiveTimeout)) s for \(key), which never arrived")
      }
    }
    return removing ? received.removeValue(forKey: key)! : received[key]!
  }

  private func send(_ message: Outgoing) {
    state.lock()
    outbox.append(message)
    state.broadcast()
    state.unlock()
  }

  // MARK: DistributedBackend

  public func agree(on value: UInt64) throws -> Bool {
    // Two 32-bit halves, so that the values survive a reduction over signed integers.
    let halves = [Int(value >> 32), Int(value & 0xFFFF_FFFF)]
    let high = try comm.allreduce(halves + halves.map { -$0 }, .max)
    return high[0] == -high[2] && high[1] == -high[3]
  }

  public func failures(_ failure: String?) throws -> [(device: Int, message: String)] {
    let failed = try comm.allreduce(failure == nil ? 0 : 1, .sum)
    if failed == 0 { return [] }
    // The failing ranks send their messages to rank 0, which hands the list to everyone.
    let tag: Int32 = 2
    var list: [UInt8] = []
    if let failure, localDevice != 0 {
      try Array(failure.utf8).withUnsafeBytes { try comm.send($0, to: 0, tag: tag) }
    }
    if localDevice == 0 {
      var lines: [String] = failure.map { ["0\t" + $0] } ?? []
      for _ in 0..<(failed - (failure == nil ? 0 : 1)) {
        let status = try comm.probe(tag: tag)
        var bytes = [UInt8](repeating: 0, count: status.count)
        try bytes.withUnsafeMutableBytes { _ = try comm.receive(into: $0, from: status.source, tag: tag) }
        lines.append("\(status.source)\t" + String(decoding: bytes, as: UTF8.self))
      }
      list = Array(lines.joined(separator: "\u{0}").utf8)
    }
    list = try comm.broadcast(list, root: 0)
    return String(decoding: list, as: UTF8.self).split(separator: "\u{0}").map { line in
      let parts = line.split(separator: "\t", maxSplits: 1)
      return (Int(parts[0]) ?? -1, parts.count > 1 ? String(parts[1]) : "")
    }.sorted { $0.device < $1.device }
  }

  /// An error on this rank where no caller can catch it (a task run for the coordinator): rank 0
  /// is told (it prints the message and stops the job), then this rank stops the job itself in case
  /// rank 0 cannot. On rank 0, or before the progress thread runs, the job stops at once.
  public func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data("hydra-mpi: rank \(localDevice): error: \(message)\n".utf8))
    if localDevice != 0 && progressThread != nil && Thread.current !== progressThread {
      send(.control([Op.fail.rawValue, Int64(code)] + Array(message.utf8.prefix(4000)).map { Int64($0) }, to: 0))
      // Rank 0 ends the job; should it not, this rank does after a moment.
      Thread.sleep(forTimeInterval: 5)
    }
    communicator.abort(code: code)
  }

  public func attach(runs: [ModelRun], device: Device, store: HostStore) throws {
    state.lock()
    self.runs = runs
    self.device = device
    self.store = store
    state.unlock()
    try start(models: runs.count, shards: runs.map { max($0.shards.count, $0.tiedShards.count) }.max() ?? 1)
  }

  public func runRemote(
    _ task: ShardTask, homes: [Int], movedFrom: Int?, on device: Int, completion: @escaping (RemoteOutcome) -> Void
  ) {
    state.lock()
    completions[device, default: []].append(completion)
    let kind = [task.model, task.shard, task.direction == .forward ? 0 : 1]
    remoteTasks[device, default: []].append(kind + [task.step])
    lastHomes[task.model] = homes
    if remoteTasks[device]!.count == 1 { expect(device, kind, from: DispatchTime.now().uptimeNanoseconds) }
    outbox.append(
      .control(
        [
          Op.run.rawValue, Int64(task.model), Int64(task.shard), task.direction == .forward ? 0 : 1, Int64(task.step),
          Int64(movedFrom ?? -1), Int64(homes.count),
        ] + homes.map { Int64($0) }, to: device))
    state.broadcast()
    state.unlock()
  }

  public func willRun(_ task: ShardTask, of run: ModelRun, homes: [Int], movedFrom: Int?) throws {
    state.lock()
    self.homes[task.model] = homes
    state.unlock()
    if movedFrom != nil { try receiveState(run, shard: task.shard, step: task.step, kind: .shardState) }
  }

  public func move(model: Int, shard: Int, step: Int, from: Int, to: Int) {
    send(.control([Op.move.rawValue, Int64(model), Int64(shard), Int64(step), Int64(to)], to: from))
  }

  public func gather(_ run: ModelRun, homes: [Int], optimizerState: Bool) throws {
    try gather(run, homes: homes, step: run.step, valuesOnly: !optimizerState)
  }

  /// Asks the homes of `run`'s shards held elsewhere for their state (or values alone) and writes
  /// it into this process's copy; returns those shards.
  @discardableResult
  private func gather(_ run: ModelRun, homes: [Int], step: Int, valuesOnly: Bool) throws -> [Int] {
    let elsewhere = homes.indices.filter { homes[$0] != localDevice }
    for s in elsewhere {
      send(
        .control(
          [Op.gather.rawValue, Int64(run.index), Int64(s), Int64(step), valuesOnly ? 1 : 0], to: homes[s]))
    }
    for s in elsewhere { try receiveState(run, shard: s, step: step, kind: .gather, valuesOnly: valuesOnly) }
    return elsewhere
  }

  public func runStepWork(_ run: ModelRun, on device: Int, homes: [Int], evaluate: Bool, checkpoint: Bool) throws
    -> (evaluation: Evaluation?, seconds: Double)
  {
    // The model's history goes along: the checkpoint's trainer state holds it.
    var words: [Int64] = [
      Op.work.rawValue, Int64(run.index), Int64(run.step), evaluate ? 1 : 0, checkpoint ? 1 : 0, Int64(homes.count),
    ]
    words += homes.map { Int64($0) }
    words.append(Int64(run.trainLosses.count))
    words += run.trainLosses.map { word($0) }
    words.append(Int64(run.evaluations.count))
    for e in run.evaluations {
      words += [Int64(e.step), word(e.loss), word(e.accuracy)]
    }
    send(.control(words, to: device))
    let deadline = Date(timeIntervalSinceNow: receiveTimeout)
    state.lock()
    defer { state.unlock() }
    while workResults[run.index] == nil {
      if !state.wait(until: deadline) && workResults[run.index] == nil {
        throw RuntimeError("mpi: device \(device) did not finish the evaluation or checkpoint of \(run.id)")
      }
    }
    return workResults.removeValue(forKey: run.index)!
  }

  /// On the device where a model's step ran: gathers the model, takes on its history, evaluates
  /// and/or writes its checkpoint (`stepWork`), lets the gathered shards go, and reports.
  private func doStepWork(_ w: [Int64]) throws {
    let (model, step) = (Int(w[1]), Int(w[2]))
    let evaluate = w[3] != 0, checkpoint = w[4] != 0
    var i = 5
    func next() -> Int64 {
      defer { i += 1 }
      return w[i]
    }
    let homes = (0..<Int(next())).map { _ in Int(next()) }
    let losses = (0..<Int(next())).map { _ in double(next()) }
    let evaluations = (0..<Int(next())).map { _ in
      Evaluation(
        step: Int(next()), loss: double(next()),
        accuracy: double(next()))
    }
    let run = runs[model]
    let start = DispatchTime.now().uptimeNanoseconds
    // An evaluation alone needs the parameters only; a checkpoint their optimizer state too.
    let elsewhere = try gather(run, homes: homes, step: step, valuesOnly: !checkpoint)
    run.restore(step: step, trainLosses: losses, evaluations: evaluations)
    let e = try stepWork?(run, evaluate, checkpoint, device!)
    for s in elsewhere { run.releaseState(of: s) }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    send(
      .control(
        [
          Op.workDone.rawValue, Int64(model), e == nil ? 0 : 1, Int64(e?.step ?? 0),
          word(e?.loss ?? 0), word(e?.accuracy ?? 0),
          word(seconds),
        ], to: 0))
  }

  public func discardAll(model: Int, step: Int) {
    drop(model: model, step: step)
    for d in 0..<deviceCount where d != localDevice {
      send(.control([Op.drop.rawValue, Int64(model), Int64(step)], to: d))
    }
  }

  public func serve() throws {
    state.lock()
    while !stopRequested { state.wait() }
    state.unlock()
    stopProgress()
  }

  public func finish() throws -> [DeviceReport] {
    for d in 0..<deviceCount where d != localDevice { send(.control([Op.stop.rawValue], to: d)) }
    state.lock()
    while reports.count < deviceCount - 1 { state.wait() }
    let result = reports.sorted { $0.device < $1.device }
    state.unlock()
    stopProgress()
    return result
  }

  /// Frees the backend's communicator, then the job's (which finalizes MPI if it started it). After
  /// `finish` or `serve`; nothing may be sent afterwards.
  public func close() {
    stopProgress()
    comm.finalize()
    communicator.finalize()
  }

  /// Lets the progress thread finish what it was sending, then ends it.
  private func stopProgress() {
    guard progressThread != nil else { return }
    state.lock()
    exitRequested = true
    state.broadcast()
    state.unlock()
    progressDone.wait()
    progressThread = nil
  }

  /// Coordinator: throws, naming the rank and what it was running, when a rank has not finished its
  /// current task for `receiveTimeout` seconds.
  private func checkRanksAnswer() throws {
    state.lock()
    let now = DispatchTime.now().uptimeNanoseconds
    let limit = UInt64(receiveTimeout * 1e9)
    let stuck = remoteStart.first { d, start in remoteTasks[d]?.isEmpty == false && now > start && now - start > limit }
    let task = stuck.flatMap { remoteTasks[$0.key]?.first }
    state.unlock()
    guard let (device, _) = stuck, let task else { return }
    let model = task[0] < runs.count ? runs[task[0]].id : "model \(task[0])"
    throw RuntimeError(
      "rank \(device) stopped answering: it has not finished \(model) shard \(task[1]) \(task[2] == 0 ? "forward" : "backward") in \(Int(receiveTimeout)) s (HYDRA_RANK_TIMEOUT); stopping the job, continue it with --resume"
    )
  }

  /// The ranks on this rank's host whose process has ended (a rank that died: the launcher then
  /// sends SIGTERM to the others before it kills them). Ranks on other hosts cannot be seen.
  public func diedNeighbours() -> [Int] {
    guard peers.count == deviceCount else { return [] }
    let me = peers[localDevice]
    return peers.indices.filter { r in
      r != localDevice && peers[r].host == me.host && kill(pid_t(truncatingIfNeeded: peers[r].pid), 0) != 0
        && errno == ESRCH
    }
  }

  /// Called on SIGTERM: if a rank on this host has died, rank 0 names it and what it held and ends
  /// the process; another rank tells rank 0 (which does the same) and returns true. False when no
  /// rank here has died (the signal is a stop request).
  public func reportDiedNeighbours() -> Bool {
    let died = diedNeighbours()
    if died.isEmpty { return false }
    if localDevice == 0 { reportDied(died, seenBy: 0) }
    if died.contains(0) {
      // Said once per host, by its lowest live rank.
      let live = peers.indices.filter { peers[$0].host == peers[localDevice].host && !died.contains($0) }
      guard live.first == localDevice else { return true }
      FileHandle.standardError.write(
        Data(
          "hydra-mpi: rank 0 (pid \(peers[0].pid), the coordinator) has died; the job ends; continue it with --resume\n"
            .utf8))
      return true
    }
    send(.control([Op.died.rawValue] + died.map { Int64($0) }, to: 0))
    return true
  }

  /// Rank 0: prints which ranks died and which models' shards and tasks they held, then ends this
  /// process (the launcher is stopping the job; the models resume from their last checkpoints).
  private func reportDied(_ died: [Int], seenBy witness: Int) -> Never {
    state.lock()
    var lines: [String] = []
    for r in died {
      var held: [String] = []
      for (i, task) in (remoteTasks[r] ?? []).enumerated() {
        let id = task[0] < runs.count ? runs[task[0]].id : "model \(task[0])"
        held.append(
          "\(id) shard \(task[1]) \(task[2] == 0 ? "forward" : "backward") of step \(task[3] + 1) (\(i == 0 ? "running" : "queued"))"
        )
      }
      for (model, homes) in lastHomes.sorted(by: { $0.key < $1.key }) {
        let shards = homes.indices.filter { homes[$0] == r }
        guard !shards.isEmpty, model < runs.count else { continue }
        held.append(
          "\(runs[model].id) shard\(shards.count == 1 ? "" : "s") \(shards.map(String.init).joined(separator: ", ")) (state after step \(runs[model].step))"
        )
      }
      lines.append(
        "hydra-mpi: rank \(r) (pid \(peers[r].pid)) has died\(witness == 0 ? "" : " (seen by rank \(witness))"); it held \(held.isEmpty ? "nothing" : held.joined(separator: "; "))"
      )
    }
    state.unlock()
    lines.append("hydra-mpi: the job ends; continue it with --resume (each model from its last checkpoint)")
    FileHandle.standardError.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    fflush(stdout)
    _exit(1)
  }

  /// Under `state`: device `device` starts a task like `kind` at `start`; poll often from shortly
  /// before it is due to finish (as long as the last one like it took).
  private func expect(_ device: Int, _ kind: [Int], from start: UInt64) {
    remoteStart[device] = start
    dueAt[device] = start + UInt64(max(0, (remoteSeconds[kind] ?? 0) * 0.9) * 1e9)
  }

  /// Starts the progress thread with a tag layout for `models` models of at most `shards` shards (or
  /// ties) each. `attach` calls it; tools that move tensors without a job (the ping-pong benchmark)
  /// call it themselves, with `route`.
  public func start(models: Int, shards: Int) throws {
    let layout = try TagSpace(models: max(models, 1), shards: max(shards, 1), upperBound: comm.tagUpperBound)
    state.lock()
    tags = layout
    state.unlock()
    let thread = Thread { [self] in progress() }
    thread.name = "hydra.mpi.progress"
    progressThread = thread
    thread.start()
  }

  /// Where `model`'s shards are: a `post` for shard s goes to device `homes[s]`. The runtime sets
  /// it before each task (`willRun`); tools without a job set it here.
  public func route(model: Int, homes: [Int]) {
    state.lock()
    self.homes[model] = homes
    state.unlock()
  }

  /// Copies the shard state that arrived as `kind` into this process's copy of `run`.
  private func receiveState(
    _ run: ModelRun, shard: Int, step: Int, kind: TagSpace.Kind, valuesOnly: Bool = false
  ) throws {
    let key = DataKey(kind: kind, model: run.index, index: shard, step: step)
    let t = try wait(for: key, removing: true)
    let expected = run.stateBytes(of: shard, valuesOnly: valuesOnly)
    guard t.byteCount == expected else {
      throw RuntimeError(
        "mpi: \(key) has \(t.byteCount) bytes but this rank's shard holds \(expected): the ranks built different models (same job file and data everywhere?)"
      )
    }
    try run.writeState(of: shard, from: t.data, valuesOnly: valuesOnly)
  }

  /// The state of `shard` of `run` (or its values alone) in one tensor (not charged to any device:
  /// it is on its way out).
  private func packState(_ run: ModelRun, shard: Int, valuesOnly: Bool = false) throws -> Tensor {
    let t = try Tensor(shape: [run.stateBytes(of: shard, valuesOnly: valuesOnly) / MemoryLayout<Float>.stride])
    try run.readState(of: shard, into: t.data, valuesOnly: valuesOnly)
    return t
  }

  private func drop(model: Int, step: Int) {
    state.lock()
    for k in received.keys where k.model == model && k.step == step { received[k] = nil }
    for k in forwards.keys where k.model == model && k.step == step { forwards[k] = nil }
    state.unlock()
  }

  // MARK: The progress thread

  private func progress() {
    var sends: [MPIRequest] = []
    var receives: [(request: MPIRequest, key: DataKey, tensor: Tensor)] = []
    var idle = 0
    do {
      let layout = tags!
      let controlTag = try layout.tag(.control, model: 0, shard: 0, step: 0)
      while true {
        if localDevice == 0 { try checkRanksAnswer() }
        state.lock()
        let out = outbox
        outbox.removeAll()
        let exiting = exitRequested
        state.unlock()
        var worked = !out.isEmpty
        for message in out {
          switch message {
          case .control(let words, let to):
            let bytes = Words(words)
            sends.append(try comm.isend(bytes.buffer, to: to, tag: controlTag, keepAlive: bytes))
          case .data(let key, let tensor, let to):
            state.lock()
            tensorsSent += 1
            bytesSent += tensor.byteCount
            state.unlock()
            let tag = try layout.tag(key.kind, model: key.model, shard: key.index, step: key.step)
            let header = Words([Int64(key.step), Int64(tensor.shape.count)] + tensor.shape.map { Int64($0) })
            sends.append(try comm.isend(header.buffer, to: to, tag: tag, keepAlive: header))
            sends.append(try comm.isend(tensor, to: to, tag: tag))
          }
        }
        var i = 0
        while i < sends.count {
          if try sends[i].test() {
            sends.swapAt(i, sends.count - 1)
            sends.removeLast()
            worked = true
          } else {
            i += 1
          }
        }
        i = 0
        while i < receives.count {
          if try receives[i].request.test() {
            let r = receives[i]
            receives.remove(at: i)
            deliver(r.key, r.tensor)
            worked = true
          } else {
            i += 1
          }
        }
        while let status = try comm.iprobe() {
          worked = true
          let words = Words(count: status.count / 8)
          try comm.receive(into: words.mutableBuffer, from: status.source, tag: status.tag)
          let (kind, model, shard, _) = layout.decode(status.tag)
          if kind == .control {
            try handleControl(words.values, from: status.source)
            continue
          }
          guard let kind, words.values.count >= 2 else {
            throw RuntimeError("mpi: rank \(localDevice) got a message it cannot read (\(status))")
          }
          let v = words.values
          let shape = v[2...].map { Int($0) }
          guard Int(v[1]) == shape.count, shape.allSatisfy({ $0 >= 0 && $0 <= Int(Int32.max) }),
            shape.reduce(1, { $0.multipliedReportingOverflow(by: $1).overflow ? .max : $0 * $1 }) <= Int(Int32.max) / 4
          else {
            throw RuntimeError(
              "mpi: rank \(localDevice) got a tensor header it cannot read from rank \(status.source): \(v)")
          }
          let tensor = try Tensor(shape: shape)
          let request = try comm.irecv(into: tensor, from: status.source, tag: status.tag)
          receives.append((request, DataKey(kind: kind, model: model, index: shard, step: Int(v[0])), tensor))
        }
        if exiting && out.isEmpty && sends.isEmpty && receives.isEmpty { break }
        let now = DispatchTime.now().uptimeNanoseconds
        if worked {
          idle = 0
          fastUntil = now + 500_000
        } else {
          // Nothing to do: poll MPI again after a while (short while something is expected);
          // anything queued for sending, or a task starting to wait, wakes the thread at once.
          idle += 1
          if idle > 4 {
            state.lock()
            let waiting = waiters > 0
            if outbox.isEmpty && !exitRequested && !waiting {
              let nextDue = dueAt.values.min() ?? .max
              // A worker with nothing to do awaits its next task: that wait is the coordinator's
              // round trip, so it polls often (its core is idle anyway).
              let idleWorker = localDevice != 0 && queued == 0 && !stopRequested
              let pause =
                now < fastUntil || nextDue <= now || idleWorker ? pollFast : min(pollSlow, nextDue - now)
              _ = state.wait(until: Date(timeIntervalSinceNow: Double(pause) / 1e9))
            }
            state.unlock()
            // A task is blocked on a tensor: its core is free, spend it on noticing the arrival.
            if waiting { sched_yield() }
          }
        }
      }
    } catch {
      onFailure(error)
    }
    progressDone.signal()
  }

  /// A tensor that arrived: to whoever waits for it, or on to where its shard moved.
  private func deliver(_ key: DataKey, _ tensor: Tensor) {
    state.lock()
    if let to = forwards.removeValue(forKey: key) {
      outbox.append(.data(key, tensor, to: to))
    } else {
      received[key] = tensor
      state.broadcast()
    }
    state.unlock()
  }

  private func handleControl(_ w: [Int64], from source: Int) throws {
    guard let first = w.first, let op = Op(rawValue: first) else {
      throw RuntimeError("mpi: rank \(localDevice) got an unknown control message from rank \(source): \(w)")
    }
    switch op {
    case .run:
      let task = ShardTask(
        model: Int(w[1]), shard: Int(w[2]), direction: w[3] == 0 ? .forward : .backward, step: Int(w[4]))
      let movedFrom = w[5] >= 0 ? Int(w[5]) : nil
      let homes = w[7..<(7 + Int(w[6]))].map { Int($0) }
      runForCoordinator { [self] in try runTask(task, homes: homes, movedFrom: movedFrom) }
    case .done:
      state.lock()
      let completion = completions[source]?.isEmpty == false ? completions[source]!.removeFirst() : nil
      let now = DispatchTime.now().uptimeNanoseconds
      if remoteTasks[source]?.isEmpty == false {
        let kind = Array(remoteTasks[source]!.removeFirst().prefix(3))
        remoteSeconds[kind] = Double(now - (remoteStart[source] ?? now)) / 1e9
      }
      dueAt[source] = nil
      if let next = remoteTasks[source]?.first { expect(source, Array(next.prefix(3)), from: now) }
      state.unlock()
      let loss: Double? = w[6] != 0 ? double(w[7]) : nil
      guard let completion else {
        throw RuntimeError("mpi: rank \(source) reported a task done that this rank did not send it")
      }
      completion(RemoteOutcome(seconds: double(w[5]), loss: loss))
    case .move:
      try moveOut(model: Int(w[1]), shard: Int(w[2]), step: Int(w[3]), to: Int(w[4]))
    case .gather:
      let (model, shard, step) = (Int(w[1]), Int(w[2]), Int(w[3]))
      let packed = try packState(runs[model], shard: shard, valuesOnly: w[4] != 0)
      send(.data(DataKey(kind: .gather, model: model, index: shard, step: step), packed, to: source))
    case .drop:
      drop(model: Int(w[1]), step: Int(w[2]))
    case .stop:
      let memory = device?.kernels.memory
      let left = leftOver
      let host = Array(communicator.processorName.utf8.prefix(255)).map { Int64($0) }
      send(
        .control(
          [
            Op.bye.rawValue, Int64(memory?.peak ?? 0), Int64(store?.peakBytes ?? 0), Int64(store?.bytesWritten ?? 0),
            Int64(store?.bytesRead ?? 0), Int64(tensorsSent), Int64(bytesSent), Int64(left), Int64(host.count),
          ] + host, to: source))
      state.lock()
      stopRequested = true
      state.broadcast()
      state.unlock()
    case .fail:
      let message = String(decoding: w[2...].map { UInt8(truncatingIfNeeded: $0) }, as: UTF8.self)
      FileHandle.standardError.write(Data("hydra-mpi: rank \(source) failed; stopping the job: \(message)\n".utf8))
      communicator.abort(code: Int32(truncatingIfNeeded: w[1]))
    case .died:
      reportDied(w[1...].map { Int($0) }, seenBy: source)
    case .work:
      runForCoordinator { [self] in try doStepWork(w) }
    case .workDone:
      let e =
        w[2] != 0
        ? Evaluation(
          step: Int(w[3]), loss: double(w[4]),
          accuracy: double(w[5])) : nil
      state.lock()
      workResults[Int(w[1])] = (e, double(w[6]))
      state.broadcast()
      state.unlock()
    case .bye:
      let host = String(decoding: w[9..<(9 + Int(w[8]))].map { UInt8($0) }, as: UTF8.self)
      state.lock()
      var report = DeviceReport(
        device: source, peakBytes: Int(w[1]), storePeakBytes: Int(w[2]), bytesWrittenToDisk: Int(w[3]),
        bytesReadFromDisk: Int(w[4]), host: host)
      report.tensorsSent = Int(w[5])
      report.bytesSent = Int(w[6])
      report.leftOver = Int(w[7])
      reports.append(report)
      state.broadcast()
      state.unlock()
    }
  }

  /// Queues work the coordinator sent on this rank's device queue, counting it as queued while it
  /// waits and runs (an idle worker polls often); an error ends the job.
  private func runForCoordinator(_ work: @escaping () throws -> Void) {
    state.lock()
    queued += 1
    state.unlock()
    let box = Work(run: { [self] in
      do { try work() } catch { onFailure(error) }
      state.lock()
      queued -= 1
      state.unlock()
    })
    queue.async { box.run() }
  }

  /// Runs a task the coordinator sent, on this rank's queue, and reports back.
  private func runTask(_ task: ShardTask, homes: [Int], movedFrom: Int?) throws {
    let run = runs[task.model]
    tasksRun += 1
    if let fault, fault.rank == localDevice, tasksRun > fault.after {
      throw RuntimeError("a fault injected by HYDRA_MPI_FAULT after \(fault.after) tasks")
    }
    try willRun(task, of: run, homes: homes, movedFrom: movedFrom)
    let start = DispatchTime.now().uptimeNanoseconds
    run.seek(to: task)
    _ = try run.run(task, kernels: device!.kernels, device: device!.index)
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    let lastForward = task.direction == .forward && task.shard == run.shards.count - 1
    let loss = lastForward ? run.trainLosses.last : nil
    send(
      .control(
        [
          Op.done.rawValue, Int64(task.model), Int64(task.shard), task.direction == .forward ? 0 : 1,
          Int64(task.step), word(seconds), loss == nil ? 0 : 1,
          word(loss ?? 0),
        ], to: 0))
  }

  /// This rank was `shard`'s home; it now goes to `to` for its forward of `step`: the inputs of
  /// that forward already pushed here go on, and then the state itself.
  private func moveOut(model: Int, shard: Int, step: Int, to: Int) throws {
    let run = runs[model]
    var inputs: [DataKey] = []
    if shard > 0 { inputs.append(DataKey(kind: .activation, model: model, index: shard - 1, step: step)) }
    for (t, tie) in run.tiedShards.enumerated() where tie.replica == shard && tie.owner != shard {
      inputs.append(DataKey(kind: .tiedValue, model: model, index: t, step: step))
    }
    state.lock()
    for key in inputs {
      if let t = received.removeValue(forKey: key) {
        outbox.append(.data(key, t, to: to))
      } else {
        forwards[key] = to
      }
    }
    state.unlock()
    let packed = try packState(run, shard: shard)
    run.releaseState(of: shard)
    send(.data(DataKey(kind: .shardState, model: model, index: shard, step: step), packed, to: to))
  }
}

/// A Double carried in a control message's 64-bit word, bit for bit.
private func word(_ x: Double) -> Int64 { Int64(bitPattern: x.bitPattern) }
private func double(_ w: Int64) -> Double { Double(bitPattern: UInt64(bitPattern: w)) }

/// 64-bit words in memory that stays put while MPI sends or receives them.
private final class Words: @unchecked Sendable {
  let pointer: UnsafeMutablePointer<Int64>
  let count: Int
  init(count: Int) {
    self.count = count
    pointer = .allocate(capacity: max(count, 1))
    pointer.initialize(repeating: 0, count: max(count, 1))
  }
  convenience init(_ values: [Int64]) {
    self.init(count: values.count)
    values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
  }
  deinit { pointer.deallocate() }
  var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count * 8) }
  var mutableBuffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: count * 8) }
  var values: [Int64] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}

private struct Work: @unchecked Sendable {
  let run: () -> Void
}
