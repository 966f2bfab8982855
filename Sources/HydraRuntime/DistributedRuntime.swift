import Foundation
import HydraCore

/// The distributed runtime: one device per rank of a `Transport` (MPI, or the in-process
/// `LoopbackTransport` of the tests). Every rank builds every model (the same seeds give the same
/// initial state), reads the data set itself, and keeps the state of the shards homed on it in its
/// own host store; rank 0 also runs the coordinator and writes the output folder.
///
/// One thread per rank talks to the transport (`progress`): it starts the sends queued by the other
/// threads, takes every message as it arrives (so a transfer overlaps whatever the rank computes)
/// and carries out the coordinator's requests. The rank's tasks run on one serial queue, as under
/// `shm`.
///
/// Messages:
/// - control (`ControlMessage`): rank 0 to a device: run a task, move or send a shard's state, drop
///   a stopped step, do a step's evaluation or checkpoint, stop; a device to rank 0: task done, step
///   work done, failure, final report;
/// - tensors (activations, gradients, tied weights, shard states) under a `MessageKey`, pushed by
///   the device that makes them to the device that will use them, never through rank 0.
public final class DistributedRuntime: DistributedBackend, @unchecked Sendable {
  public let transport: Transport
  public var name: String { transport.name }
  public var deviceCount: Int { transport.size }
  public var localDevice: Int { transport.rank }
  public var bandwidth: Double { transport.bandwidth }
  /// Ends the job on an error no caller can catch (in a task run for the coordinator, or in the
  /// transport itself): it must print the error and stop every rank. The default is `fail`.
  public var onFailure: (Error) -> Void
  /// How long a task waits for a tensor before it reports it lost, and how long the coordinator
  /// waits for a rank's task or step work before it declares the rank stopped and ends the job
  /// (a rank stopped by SIGSTOP, or hung, would otherwise hold every rank for good):
  /// `HYDRA_RANK_TIMEOUT` seconds, default 600.
  public var receiveTimeout = DistributedRuntime.rankTimeoutGiven
  /// How long the coordinator waits for a rank's task before it declares the rank stopped: the
  /// same `HYDRA_RANK_TIMEOUT` (kept apart so that a test can make it the shorter of the two).
  public var rankTimeout = DistributedRuntime.rankTimeoutGiven
  static let rankTimeoutGiven =
    Double(ProcessInfo.processInfo.environment["HYDRA_RANK_TIMEOUT"] ?? "").flatMap { $0 > 0 ? $0 : nil } ?? 600
  /// Fault injection, for testing how a job ends when a rank fails in the middle of it: that rank
  /// (not 0) fails after running that many tasks. `HYDRA_MPI_FAULT=<rank>:<tasks>` sets it.
  public var fault: (rank: Int, after: Int)? = {
    guard let v = ProcessInfo.processInfo.environment["HYDRA_MPI_FAULT"] else { return nil }
    let parts = v.split(separator: ":").compactMap { Int($0) }
    return parts.count == 2 ? (parts[0], parts[1]) : nil
  }()
  /// Fault injection: that rank (not 0) stops answering after running that many tasks (its next
  /// task never ends), as a hung or SIGSTOPped rank would. For the in-process tests.
  public var stall: (rank: Int, after: Int)?
  private var tasksRun = 0
  /// Why this rank ended the job, once it has (`fail`, or a failure another rank reported).
  public var endedWith: String? {
    state.lock()
    defer { state.unlock() }
    return _endedWith
  }
  private var _endedWith: String?

  private let queue = DispatchQueue(label: "hydra.distributed.device")
  /// Polling for arrivals costs the tasks CPU time (under MPI on this machine, 20 us polling made
  /// tasks ~10 % slower); not polling costs latency, which deciding one task ahead hides. The
  /// progress thread polls without pause while a task waits for a tensor; every `pollFast`
  /// (default 100 us) for a while after a message came or went, and when a task sent to another
  /// rank is due to finish; every `pollSlow` (default 2 ms) otherwise. `HYDRA_POLL_FAST_US` and
  /// `HYDRA_POLL_SLOW_US` change them.
  private let pollFast = DistributedRuntime.microseconds("HYDRA_POLL_FAST_US", 100)
  private let pollSlow = DistributedRuntime.microseconds("HYDRA_POLL_SLOW_US", 2000)
  /// How long a task waiting for a tensor looks for it before sleeping (`HYDRA_SPIN_US`, 200 us).
  private let spinNanoseconds = DistributedRuntime.microseconds("HYDRA_SPIN_US", 200)

  private static func microseconds(_ variable: String, _ value: UInt64) -> UInt64 {
    let given = ProcessInfo.processInfo.environment[variable].flatMap { UInt64($0) }
    return min(given ?? value, 1_000_000) * 1000
  }

  private let state = NSCondition()
  // Under `state`:
  /// Tasks blocked on a tensor.
  private var waiters = 0
  /// Tasks and step work sent here by the coordinator and not finished: none means the coordinator's
  /// next message is awaited (a worker polls often then).
  private var queued = 0
  /// Until when to poll often; when each remote device's task is due.
  private var fastUntil: UInt64 = 0
  private var dueAt: [Int: UInt64] = [:]
  /// Per remote device, its tasks in flight with the seconds the coordinator expects each to take,
  /// and when the first started.
  private var remoteTasks: [Int: [(task: ShardTask, expected: Double)]] = [:]
  private var remoteStart: [Int: UInt64] = [:]
  private var runs: [ModelRun] = []
  private var device: Device?
  private var store: HostStore?
  private var received: [MessageKey: Tensor] = [:]
  /// Tensors that were pushed here for a shard that has moved since: sent on when they arrive.
  private var forwards: [MessageKey: Int] = [:]
  private var outbox: [Outgoing] = []
  /// Where each shard's state lives, by model: the job's one table of homes. On the coordinator's
  /// rank it is current (`move` changes it); another rank sets a model's entry from each task of
  /// it the coordinator sends (where the task's outputs and gathers go).
  private var homes: [Int: [Int]] = [:]
  /// Per device, the completions of the tasks sent to it, in order (it runs them in that order).
  private var completions: [Int: [(RemoteOutcome) -> Void]] = [:]
  private var reports: [DeviceReport] = []
  /// Per model, the outcome of the step work a device did for the coordinator.
  private var workResults: [Int: (evaluation: Evaluation?, seconds: Double)] = [:]
  public var stepWork: ((ModelRun, Bool, Bool, Device) throws -> Evaluation?)?
  /// Tensors (and their bytes) this rank sent to other ranks.
  public private(set) var tensorsSent = 0
  public private(set) var bytesSent = 0
  private var stopRequested = false
  private var exitRequested = false
  private var progressThread: Thread?
  private let progressDone = DispatchSemaphore(value: 0)

  /// Every rank's process id and a hash of its host name, exchanged at the start, so that a rank can
  /// tell which ranks on its own host have died (`diedNeighbours`).
  private var peers: [(pid: Int, host: Int)] = []

  enum Outgoing {
    case control(ControlMessage, to: Int)
    case data(MessageKey, Tensor, to: Int)
  }

  /// Every rank, together: takes the transport and exchanges the ranks' process ids.
  public init(transport: Transport) throws {
    self.transport = transport
    onFailure = { _ in }
    var mine = [UInt8]()
    for x in [Int(getpid()), DistributedRuntime.hostHash(transport.hostName)] {
      withUnsafeBytes(of: Int64(x).littleEndian) { mine += $0 }
    }
    peers = try transport.allGather(mine).map { bytes in
      guard bytes.count == 16 else { return (0, 0) }
      return (Int(littleEndianWord(bytes, at: 0)), Int(littleEndianWord(bytes, at: 8)))
    }
    onFailure = { [unowned self] error in fail("\(error)", code: 1) }
  }

  /// FNV-1a of a host name: the same on every rank (Swift's `Hasher` is seeded per process).
  static func hostHash(_ name: String) -> Int {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in name.utf8 {
      h = (h ^ UInt64(byte)) &* 0x100_0000_01b3
    }
    return Int(bitPattern: UInt(h))
  }

  // MARK: Backend

  public func execute(on device: Int, _ work: @escaping () -> Void) {
    precondition(device == localDevice, "\(name): rank \(localDevice) asked to run work of device \(device)")
    let box = Work(run: work)
    queue.async { box.run() }
  }

  public func post(_ tensor: Tensor, key: TransferKey, from device: Int, for consumer: Int) throws {
    let k = MessageKey(key)
    state.lock()
    defer { state.unlock() }
    let destination = homes[key.model]?[consumer] ?? localDevice
    if destination == localDevice {
      received[k] = tensor
    } else {
      outbox.append(.data(k, tensor, to: destination))
    }
    state.broadcast()
  }

  public func fetch(_ key: TransferKey, to device: Int) throws -> Tensor {
    try wait(for: MessageKey(key), removing: false)
  }

  public func discard(_ key: TransferKey) {
    state.lock()
    received[MessageKey(key)] = nil
    state.unlock()
  }

  /// Tensors received (or posted here) and not yet discarded, and tensors waiting to be sent on to
  /// a moved shard: a finished job leaves none.
  public var leftOver: Int {
    state.lock()
    defer { state.unlock() }
    return received.count + forwards.count
  }

  /// Blocks until `key` has arrived; with `removing`, takes it out of the received set.
  private func wait(for key: MessageKey, removing: Bool) throws -> Tensor {
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
          "\(name): rank \(localDevice) waited \(Int(receiveTimeout)) s for \(key), which never arrived")
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
    let all = try transport.allGather(withUnsafeBytes(of: value.littleEndian) { Array($0) })
    return all.allSatisfy { $0 == all[0] }
  }

  public func failures(_ failure: String?) throws -> [(device: Int, message: String)] {
    // A first byte says whether there is a message: an empty one is a failure too.
    let all = try transport.allGather(failure.map { [1] + Array($0.utf8) } ?? [0])
    return all.enumerated().compactMap { rank, bytes in
      bytes.first == 1 ? (rank, String(decoding: bytes.dropFirst(), as: UTF8.self)) : nil
    }
  }

  /// Rank 0: where it writes why the job ended when it ends the job on a failure (`failure.txt` in
  /// the output folder): an MPI launcher that kills the ranks may lose what they were printing,
  /// and a batch system's log may be elsewhere. nil: nowhere.
  public var failureRecord: String?

  /// Writes `message` to `failureRecord`, best effort (the job is ending either way); whole or not
  /// at all. A killed process's written pages stay in the page cache.
  private func recordFailure(_ message: String) {
    guard localDevice == 0, let path = failureRecord else { return }
    try? writeAtomically(message + "\n", to: path)
  }

  /// An error on this rank where no caller can catch it (a task run for the coordinator): rank 0
  /// is told (it prints the message and stops the job), then this rank stops the job itself in case
  /// rank 0 cannot. On rank 0, or before the progress thread runs, the job stops at once.
  public func fail(_ message: String, code: Int32) -> Never {
    state.lock()
    if _endedWith == nil { _endedWith = message }
    state.unlock()
    FileHandle.standardError.write(Data("hydra-mpi: rank \(localDevice): error: \(message)\n".utf8))
    if localDevice == 0 { recordFailure("rank 0: error: \(message)") }
    if localDevice != 0 && progressThread != nil && Thread.current !== progressThread {
      send(.control(.fail(code: code, message: String(message.prefix(4000))), to: 0))
      // Rank 0 ends the job; should it not, this rank does after a moment.
      Thread.sleep(forTimeInterval: 5)
    }
    transport.abort(code: code)
  }

  public func attach(runs: [ModelRun], device: Device, store: HostStore, homes: [[Int]]) throws {
    precondition(homes.count == runs.count && zip(runs, homes).allSatisfy { $0.shards.count == $1.count })
    state.lock()
    self.runs = runs
    self.device = device
    self.store = store
    self.homes = Dictionary(uniqueKeysWithValues: homes.enumerated().map { ($0, $1) })
    state.unlock()
    try start(models: runs.count, shards: runs.map { max($0.shards.count, $0.tiedShards.count) }.max() ?? 1)
  }

  public func homes(of model: Int) -> [Int] {
    state.lock()
    defer { state.unlock() }
    return homes[model] ?? []
  }

  public func runRemote(
    _ task: ShardTask, expectedSeconds: Double, movedFrom: Int?, on device: Int,
    completion: @escaping (RemoteOutcome) -> Void
  ) {
    state.lock()
    completions[device, default: []].append(completion)
    remoteTasks[device, default: []].append((task, expectedSeconds))
    if remoteTasks[device]!.count == 1 { expect(device, expectedSeconds, from: DispatchTime.now().uptimeNanoseconds) }
    outbox.append(.control(.run(task, movedFrom: movedFrom, homes: homes[task.model] ?? []), to: device))
    state.broadcast()
    state.unlock()
  }

  public func willRun(_ task: ShardTask, of run: ModelRun, movedFrom: Int?) throws {
    if movedFrom != nil { try receiveState(run, shard: task.shard, step: task.step, kind: .shardState) }
  }

  public func move(model: Int, shard: Int, step: Int, to: Int) -> Int {
    state.lock()
    let from = homes[model]![shard]
    homes[model]![shard] = to
    outbox.append(.control(.move(model: model, shard: shard, step: step, to: to), to: from))
    state.broadcast()
    state.unlock()
    return from
  }

  public func gather(_ run: ModelRun, optimizerState: Bool) throws {
    try gather(run, step: run.step, valuesOnly: !optimizerState)
  }

  /// Asks the homes of `run`'s shards held elsewhere for their state (or values alone) and writes
  /// it into this process's copy; returns those shards.
  @discardableResult
  private func gather(_ run: ModelRun, step: Int, valuesOnly: Bool) throws -> [Int] {
    let homes = homes(of: run.index)
    let elsewhere = homes.indices.filter { homes[$0] != localDevice }
    for s in elsewhere {
      send(.control(.gather(model: run.index, shard: s, step: step, valuesOnly: valuesOnly), to: homes[s]))
    }
    for s in elsewhere { try receiveState(run, shard: s, step: step, kind: .gather, valuesOnly: valuesOnly) }
    return elsewhere
  }

  public func runStepWork(_ run: ModelRun, on device: Int, evaluate: Bool, checkpoint: Bool) throws
    -> (evaluation: Evaluation?, seconds: Double)
  {
    // The model's history goes along: the checkpoint's trainer state holds it.
    send(
      .control(
        .work(
          model: run.index, step: run.step, evaluate: evaluate, checkpoint: checkpoint, homes: homes(of: run.index),
          trainLosses: run.trainLosses, evaluations: run.evaluations), to: device))
    let deadline = Date(timeIntervalSinceNow: receiveTimeout)
    state.lock()
    defer { state.unlock() }
    while workResults[run.index] == nil {
      if !state.wait(until: deadline) && workResults[run.index] == nil {
        throw RuntimeError("\(name): device \(device) did not finish the evaluation or checkpoint of \(run.id)")
      }
    }
    return workResults.removeValue(forKey: run.index)!
  }

  /// On the device where a model's step ran: gathers the model, takes on its history, evaluates
  /// and/or writes its checkpoint (`stepWork`), lets the gathered shards go, and reports.
  private func doStepWork(
    model: Int, step: Int, evaluate: Bool, checkpoint: Bool, homes: [Int], losses: [Double],
    evaluations: [Evaluation]
  ) throws {
    guard model >= 0 && model < runs.count else { throw RuntimeError("\(name): step work for unknown model \(model)") }
    let run = runs[model]
    let start = DispatchTime.now().uptimeNanoseconds
    // An evaluation alone needs the parameters only; a checkpoint their optimizer state too.
    setHomes(model: model, homes)
    let elsewhere = try gather(run, step: step, valuesOnly: !checkpoint)
    run.restore(step: step, trainLosses: losses, evaluations: evaluations)
    let e = try stepWork?(run, evaluate, checkpoint, device!)
    for s in elsewhere { run.releaseState(of: s) }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    send(.control(.workDone(model: model, evaluation: e, seconds: seconds), to: 0))
  }

  public func settle(model: Int, release: Bool) {
    for d in 0..<deviceCount where d != localDevice {
      send(.control(.settle(model: model, release: release), to: d))
    }
  }

  public func discardAll(model: Int, step: Int) {
    drop(model: model, step: step)
    for d in 0..<deviceCount where d != localDevice {
      send(.control(.drop(model: model, step: step), to: d))
    }
  }

  public func serve() throws {
    state.lock()
    while !stopRequested { state.wait() }
    state.unlock()
    stopProgress()
  }

  public func finish() throws -> [DeviceReport] {
    for d in 0..<deviceCount where d != localDevice { send(.control(.stop, to: d)) }
    state.lock()
    while reports.count < deviceCount - 1 { state.wait() }
    let result = reports.sorted { $0.device < $1.device }
    state.unlock()
    stopProgress()
    return result
  }

  /// Ends the progress thread and releases the transport. After `finish` or `serve`; nothing may
  /// be sent afterwards.
  public func close() {
    stopProgress()
    transport.close()
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
  /// current task for `rankTimeout` seconds.
  private func checkRanksAnswer() throws {
    state.lock()
    let now = DispatchTime.now().uptimeNanoseconds
    let limit = UInt64(rankTimeout * 1e9)
    let stuck = remoteStart.first { d, start in remoteTasks[d]?.isEmpty == false && now > start && now - start > limit }
    let task = stuck.flatMap { remoteTasks[$0.key]?.first?.task }
    state.unlock()
    guard let (device, _) = stuck, let task else { return }
    let model = task.model < runs.count ? runs[task.model].id : "model \(task.model)"
    throw RuntimeError(
      "rank \(device) stopped answering: it has not finished \(model) shard \(task.shard) \(task.direction) in \(Int(rankTimeout)) s (HYDRA_RANK_TIMEOUT); stopping the job, continue it with --resume"
    )
  }

  /// The ranks on this rank's host whose process has ended (a rank that died: the launcher then
  /// sends SIGTERM to the others before it kills them). Ranks on other hosts cannot be seen.
  public func diedNeighbours() -> [Int] {
    guard peers.count == deviceCount else { return [] }
    let me = peers[localDevice]
    return peers.indices.filter { r in
      r != localDevice && peers[r].host == me.host && peers[r].pid != me.pid
        && !isAlive(pid: pid_t(truncatingIfNeeded: peers[r].pid))
    }
  }

  /// Called on SIGTERM: if a rank on this host has died, rank 0 names it and what it held and ends
  /// the process; another rank tells rank 0 (which does the same) and returns true. False when no
  /// rank here has died (the signal is a stop request).
  public func reportDiedNeighbours() -> Bool {
    let died = diedNeighbours()
    if died.isEmpty { return false }
    if localDevice == 0 { reportDied(died, seenBy: 0) }
    // Rank 0 gone (it may also have ended the job itself, with MPI_Abort): no one is left to say
    // what the ranks held, and mpirun names it.
    if died.contains(0) { return true }
    send(.control(.died(died), to: 0))
    return true
  }

  /// Rank 0: prints which ranks died and which models' shards and tasks they held, then ends this
  /// process (the launcher is stopping the job; the models resume from their last checkpoints).
  private func reportDied(_ died: [Int], seenBy witness: Int) -> Never {
    state.lock()
    var lines: [String] = []
    for r in died where r >= 0 && r < deviceCount {
      var held: [String] = []
      for (i, (task, _)) in (remoteTasks[r] ?? []).enumerated() {
        let id = task.model < runs.count ? runs[task.model].id : "model \(task.model)"
        held.append(
          "\(id) shard \(task.shard) \(task.direction) of step \(task.step + 1) (\(i == 0 ? "running" : "queued"))")
      }
      for (model, homes) in homes.sorted(by: { $0.key < $1.key }) {
        let shards = homes.indices.filter { homes[$0] == r }
        guard !shards.isEmpty, model < runs.count else { continue }
        held.append(
          "\(runs[model].id) shard\(shards.count == 1 ? "" : "s") \(shards.map(String.init).joined(separator: ", ")) (state after step \(runs[model].step))"
        )
      }
      let pid = r < peers.count ? " (pid \(peers[r].pid))" : ""
      lines.append(
        "hydra-mpi: rank \(r)\(pid) has died\(witness == 0 ? "" : " (seen by rank \(witness))"); it held \(held.isEmpty ? "nothing" : held.joined(separator: "; "))"
      )
    }
    state.unlock()
    lines.append("hydra-mpi: the job ends; continue it with --resume (each model from its last checkpoint)")
    FileHandle.standardError.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    recordFailure(lines.joined(separator: "\n"))
    fflush(stdout)
    _exit(1)
  }

  /// Under `state`: device `device` starts a task expected to take `seconds` at `start`; poll often
  /// from shortly before it is due to finish.
  private func expect(_ device: Int, _ seconds: Double, from start: UInt64) {
    remoteStart[device] = start
    dueAt[device] = start + UInt64(max(0, min(seconds, 1e6) * 0.9) * 1e9)
  }

  /// Starts the progress thread, for keys of `models` models of at most `shards` shards (or ties)
  /// each. `attach` calls it; tools that move tensors without a job (the ping-pong benchmark) call
  /// it themselves, with `route`.
  public func start(models: Int, shards: Int) throws {
    try transport.prepare(models: max(models, 1), indices: max(shards, 1))
    let thread = Thread { [self] in progress() }
    thread.name = "hydra.distributed.progress"
    progressThread = thread
    thread.start()
  }

  /// Where `model`'s shards are: a `post` for shard s goes to device `homes[s]`. A rank that is not
  /// the coordinator sets it from each task of the model; tools without a job set it themselves.
  public func setHomes(model: Int, _ homes: [Int]) {
    state.lock()
    self.homes[model] = homes
    state.unlock()
  }

  /// Copies the shard state that arrived as `kind` into this process's copy of `run`.
  private func receiveState(
    _ run: ModelRun, shard: Int, step: Int, kind: MessageKind, valuesOnly: Bool = false
  ) throws {
    let key = MessageKey(kind, model: run.index, index: shard, step: step)
    let t = try wait(for: key, removing: true)
    let expected = run.stateBytes(of: shard, valuesOnly: valuesOnly)
    guard t.byteCount == expected else {
      throw RuntimeError(
        "\(name): \(key) has \(t.byteCount) bytes but this rank's shard holds \(expected): the ranks built different models (same job file and data everywhere?)"
      )
    }
    try run.unpackState(of: shard, from: t, valuesOnly: valuesOnly)
  }

  private func drop(model: Int, step: Int) {
    state.lock()
    for k in received.keys where k.model == model && k.step == step { received[k] = nil }
    for k in forwards.keys where k.model == model && k.step == step { forwards[k] = nil }
    state.unlock()
  }

  // MARK: The progress thread

  private func progress() {
    var idle = 0
    do {
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
          case .control(let control, let to):
            try transport.send(.control(control.encoded), to: to)
          case .data(let key, let tensor, let to):
            state.lock()
            tensorsSent += 1
            bytesSent += tensor.byteCount
            state.unlock()
            // Transports read host memory: a tensor on a device is copied off it first.
            try transport.send(.tensor(key, try tensor.onHost()), to: to)
          }
        }
        for (source, message) in try transport.poll() {
          worked = true
          switch message {
          case .control(let bytes): try handle(try ControlMessage(decoding: bytes, from: source), from: source)
          case .tensor(let key, let tensor): deliver(key, tensor)
          }
        }
        if exiting && out.isEmpty && transport.isIdle { break }
        let now = DispatchTime.now().uptimeNanoseconds
        state.lock()
        if worked {
          idle = 0
          fastUntil = now + 500_000
          state.unlock()
          continue
        }
        // Nothing to do: poll again after a while (short while something is expected); anything
        // queued for sending, or a task starting to wait, wakes the thread at once.
        idle += 1
        let waiting = waiters > 0
        if idle > 4 && outbox.isEmpty && !exitRequested && !waiting {
          let nextDue = dueAt.values.min() ?? .max
          // A worker with nothing to do awaits its next task: that wait is the coordinator's
          // round trip, so it polls often (its core is idle anyway).
          let idleWorker = localDevice != 0 && queued == 0 && !stopRequested
          let pause = now < fastUntil || nextDue <= now || idleWorker ? pollFast : min(pollSlow, nextDue - now)
          _ = state.wait(until: Date(timeIntervalSinceNow: Double(pause) / 1e9))
        }
        state.unlock()
        // A task is blocked on a tensor: its core is free, spend it on noticing the arrival.
        if idle > 4 && waiting { sched_yield() }
      }
    } catch {
      onFailure(error)
    }
    progressDone.signal()
  }

  /// A tensor that arrived: to whoever waits for it, or on to where its shard moved.
  private func deliver(_ key: MessageKey, _ tensor: Tensor) {
    state.lock()
    if let to = forwards.removeValue(forKey: key) {
      outbox.append(.data(key, tensor, to: to))
    } else {
      received[key] = tensor
      state.broadcast()
    }
    state.unlock()
  }

  private func handle(_ message: ControlMessage, from source: Int) throws {
    switch message {
    case .run(let task, let movedFrom, let homes):
      runForCoordinator { [self] in try runTask(task, homes: homes, movedFrom: movedFrom) }
    case .done(_, let seconds, let loss):
      state.lock()
      let completion = completions[source]?.isEmpty == false ? completions[source]!.removeFirst() : nil
      let now = DispatchTime.now().uptimeNanoseconds
      if remoteTasks[source]?.isEmpty == false { remoteTasks[source]!.removeFirst() }
      dueAt[source] = nil
      if let next = remoteTasks[source]?.first { expect(source, next.expected, from: now) }
      state.unlock()
      guard let completion else {
        throw RuntimeError("\(name): rank \(source) reported a task done that this rank did not send it")
      }
      completion(RemoteOutcome(seconds: seconds, loss: loss))
    case .move(let model, let shard, let step, let to):
      try moveOut(model: model, shard: shard, step: step, to: to)
    case .gather(let model, let shard, let step, let valuesOnly):
      guard model >= 0 && model < runs.count else { throw RuntimeError("\(name): gather of unknown model \(model)") }
      let packed = try runs[model].packState(of: shard, valuesOnly: valuesOnly)
      send(.data(MessageKey(.gather, model: model, index: shard, step: step), packed, to: source))
    case .drop(let model, let step):
      drop(model: model, step: step)
    case .stop:
      var report = DeviceReport(
        device: localDevice, peakBytes: device?.memory.peak ?? 0, storePeakBytes: store?.peakBytes ?? 0,
        bytesWrittenToDisk: store?.bytesWritten ?? 0, bytesReadFromDisk: store?.bytesRead ?? 0,
        host: String(transport.hostName.prefix(255)))
      report.leftOver = leftOver
      report.traffic = device?.kernels.memory.buffers?.traffic ?? DeviceTraffic()
      state.lock()
      report.tensorsSent = tensorsSent
      report.bytesSent = bytesSent
      outbox.append(.control(.bye(report), to: source))
      stopRequested = true
      state.broadcast()
      state.unlock()
    case .fail(let code, let message):
      FileHandle.standardError.write(Data("hydra-mpi: rank \(source) failed; stopping the job: \(message)\n".utf8))
      recordFailure("rank \(source) failed; stopping the job: \(message)")
      state.lock()
      if _endedWith == nil { _endedWith = "rank \(source) failed: \(message)" }
      state.unlock()
      transport.abort(code: code)
    case .work(let model, let step, let evaluate, let checkpoint, let homes, let losses, let evaluations):
      runForCoordinator { [self] in
        try doStepWork(
          model: model, step: step, evaluate: evaluate, checkpoint: checkpoint, homes: homes, losses: losses,
          evaluations: evaluations)
      }
    case .workDone(let model, let evaluation, let seconds):
      state.lock()
      workResults[model] = (evaluation, seconds)
      state.broadcast()
      state.unlock()
    case .bye(var report):
      report.device = source
      state.lock()
      reports.append(report)
      state.broadcast()
      state.unlock()
    case .died(let ranks):
      reportDied(ranks, seenBy: source)
    case .settle(let model, let release):
      runForCoordinator { [self] in
        guard model >= 0 && model < runs.count else {
          throw RuntimeError("\(name): selection of unknown model \(model)")
        }
        if release { runs[model].stopBySelection() } else { try runs[model].demoteState() }
      }
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
    guard task.model >= 0 && task.model < runs.count else { throw RuntimeError("\(name): a task of unknown model") }
    let run = runs[task.model]
    tasksRun += 1
    if let fault, fault.rank == localDevice, tasksRun > fault.after {
      throw RuntimeError("a fault injected by HYDRA_MPI_FAULT after \(fault.after) tasks")
    }
    if let stall, stall.rank == localDevice, tasksRun > stall.after {
      while true { Thread.sleep(forTimeInterval: 3600) }
    }
    setHomes(model: task.model, homes)
    try willRun(task, of: run, movedFrom: movedFrom)
    let start = DispatchTime.now().uptimeNanoseconds
    run.seek(to: task)
    _ = try run.run(task, kernels: device!.kernels, device: device!.index)
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    send(
      .control(.done(task, seconds: seconds, loss: run.chain.computesLoss(task) ? run.trainLosses.last : nil), to: 0))
  }

  /// This rank was `shard`'s home; it now goes to `to` for its forward of `step`: the inputs of
  /// that forward already pushed here go on, and then the state itself.
  private func moveOut(model: Int, shard: Int, step: Int, to: Int) throws {
    guard model >= 0 && model < runs.count else { throw RuntimeError("\(name): a move of unknown model \(model)") }
    let run = runs[model]
    var inputs: [MessageKey] = []
    if shard > 0 { inputs.append(MessageKey(.activation, model: model, index: shard - 1, step: step)) }
    for (t, tie) in run.tiedShards.enumerated() where tie.replica == shard && tie.owner != shard {
      inputs.append(MessageKey(.tiedValue, model: model, index: t, step: step))
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
    let packed = try run.packState(of: shard)
    run.releaseState(of: shard)
    send(.data(MessageKey(.shardState, model: model, index: shard, step: step), packed, to: to))
  }
}

private struct Work: @unchecked Sendable {
  let run: () -> Void
}
