import Foundation
import HydraCore

/// The training settings of one model.
public struct TrainSettings: Sendable {
  public var steps: Int
  public var batchSize: Int
  public var shuffle: Bool
  public var evalEvery: Int  // 0: only at the end
  public var evalBatches: Int
  public var checkpointEvery: Int  // 0: only at the end
  public var optimizer: Optimizer
  public init(
    steps: Int, batchSize: Int, shuffle: Bool = true, evalEvery: Int = 0, evalBatches: Int = 20,
    checkpointEvery: Int = 0, optimizer: Optimizer
  ) {
    self.steps = steps
    self.batchSize = batchSize
    self.shuffle = shuffle
    self.evalEvery = evalEvery
    self.evalBatches = evalBatches
    self.checkpointEvery = checkpointEvery
    self.optimizer = optimizer
  }
}

public enum ModelStatus: Sendable, Equatable {
  case pending, running, done
  case diverged(step: Int)
  /// Stopped by the selection policy at a rung, after `step` steps.
  case stopped(step: Int)
  public var name: String {
    switch self {
    case .pending: return "pending"
    case .running: return "running"
    case .done: return "done"
    case .diverged: return "diverged"
    case .stopped: return "stopped"
    }
  }
  public var isStopped: Bool {
    if case .stopped = self { return true }
    return false
  }
  public var isDiverged: Bool {
    if case .diverged = self { return true }
    return false
  }
  public var isFinished: Bool { self == .done || isDiverged || isStopped }
}

public struct Evaluation: Sendable {
  public var step: Int
  public var loss: Double
  public var accuracy: Double
  public init(step: Int, loss: Double, accuracy: Double) {
    self.step = step
    self.loss = loss
    self.accuracy = accuracy
  }
}

/// How a model's activations use device memory.
public struct ActivationPolicy: Sendable, Equatable {
  /// Inside a shard, keep only its input between its forward and backward and recompute the rest
  /// in the backward (never for the last shard, whose backward follows its forward at once).
  public var checkpointing: Bool
  /// Free every block buffer after its shard's backward (and, with checkpointing, after its
  /// forward), so that a device with a budget holds only what the running shard needs.
  public var releaseBuffers: Bool
  /// Bring the next shard of this model onto the device while the current one computes (double
  /// buffering); off for a model whose shards do not fit the device twice.
  public var prefetch: Bool
  public init(checkpointing: Bool = false, releaseBuffers: Bool = false, prefetch: Bool = false) {
    self.checkpointing = checkpointing
    self.releaseBuffers = releaseBuffers
    self.prefetch = prefetch
  }
}

/// One member of a job in training: its blocks cut into shards, and where it stands in its chain of
/// shard tasks. A step is the strict chain forward 0 ..< k, loss, backward k-1 ... 0; each shard's
/// optimizer steps right after that shard's backward.
///
/// What passes between shard tasks is explicit, as it would be between machines: the activation at
/// each shard boundary and its gradient (copied out of the blocks that made them), and for a tied
/// weight the owner's value (taken at the owner shard's forward, copied into the replica at the
/// replica shard's forward) and the replica's gradient (added to the owner's after the owner's own).
public final class ModelRun {
  public let index: Int
  public let id: String
  public let spec: ModelSpec
  public let seed: UInt64
  public let settings: TrainSettings
  public let data: BatchSource
  public let blocks: [Block]
  /// Contiguous ranges of block indices, covering every block once, in order.
  public let shards: [Range<Int>]
  /// The order of a step's tasks.
  public let chain: StepChain
  public let policy: ActivationPolicy
  /// Bytes each shard's task needs on its device (state and working set), made free before it runs.
  public let footprints: [Int]
  /// Bytes each shard's task allocates beside its state (`PartitionRequest.workingSet`): what its
  /// device's working set is opened with when the device has one (`DeviceMemory.parent`).
  public let workingSets: [Int]
  /// The most each shard's tasks really allocated (the working set's peak), per shard.
  public private(set) var measuredWorkingSets: [Int]
  /// The state of each shard, as the host store moves it (nil without a store).
  public let shardStates: [ShardState]
  private let store: HostStore?
  /// The host store holding this model's shard state, if any.
  public var hostStore: HostStore? { store }
  private let ties: [Tie]

  /// A tied parameter: the owner steps; the replica is a copy used by another block.
  private struct Tie {
    let owner: Parameter
    let ownerShard: Int
    let replica: Parameter
    let replicaShard: Int
  }

  public private(set) var status: ModelStatus = .pending
  /// Completed steps.
  public private(set) var step = 0
  /// Position in the current step's chain: 0 ..< 2k.
  public private(set) var position = 0
  private var batch: Batch?
  /// The step `batch` belongs to.
  private var batchStep = -1
  /// Moves boundary activations, their gradients and tied weights between this model's tasks.
  public let backend: Backend
  /// What this model keeps between its tasks, in the host store: tensors posted (by key) and the
  /// activations a shard's forward kept for its backward (by shard).
  private var held: [TransferKey: ShardState] = [:]
  private var kept: [Int: ShardState] = [:]
  /// The transfers the running task posted or fetched, and those it discarded.
  private var touched: [TransferKey: Tensor] = [:]
  private var discarded: Set<TransferKey> = []

  public private(set) var trainLosses: [Double] = []
  public private(set) var evaluations: [Evaluation] = []
  public var seconds: Double = 0
  /// Checkpoints this process wrote for the model, and the seconds they took.
  public var checkpointsWritten = 0
  public var checkpointSeconds: Double = 0

  /// Builds and initialises every block. Shard state goes to `store` when given (which may put it
  /// on disk at once), else it is charged to `memory`. With a store, the state of a shard for which
  /// `keep` is false is let go as soon as it is built: another process holds it (`mpi`).
  public init(
    index: Int, id: String, spec: ModelSpec, seed: UInt64, settings: TrainSettings,
    data: BatchSource, shards: [Range<Int>], backend: Backend, memory: DeviceMemory? = nil,
    store: HostStore? = nil, policy: ActivationPolicy = ActivationPolicy(), footprints: [Int]? = nil,
    workingSets: [Int]? = nil, keep: (Int) -> Bool = { _ in true }
  ) throws {
    self.backend = backend
    self.footprints = footprints ?? Array(repeating: 0, count: shards.count)
    self.workingSets = workingSets ?? Array(repeating: 0, count: shards.count)
    measuredWorkingSets = Array(repeating: 0, count: shards.count)
    precondition(shards.first?.lowerBound == 0 && shards.last?.upperBound == spec.blockCount)
    self.index = index
    self.id = id
    self.spec = spec
    self.seed = seed
    self.settings = settings
    self.data = data
    self.shards = shards
    chain = StepChain(shards: shards.count)
    self.policy = policy
    self.store = store
    func shardOf(_ block: Int) -> Int { shards.firstIndex { $0.contains(block) }! }
    var blocks: [Block] = []
    var states: [ShardState] = []
    for (s, range) in shards.enumerated() {
      var params: [Parameter] = []
      // Each parameter's initial values come from its own seed (the model's and its name), so a
      // shard held elsewhere need not be drawn here: its values arrive with it if it ever comes.
      let held = store == nil || keep(s)
      // The shard's tensors mapped first, their pages faulted in on every core after, then drawn.
      // Gradients parked: each backward makes its shard's and gives them back after, so a model
      // holds no gradient pages between its backwards (`Tensor.park`).
      let made = try MappedBuffers.shared.deferringPopulation {
        try range.map { i in
          let block = try Parameter.withParkedGradients { try spec.makeBlock(i, memory: nil) }
          try settings.optimizer.allocateState(block.parameters, memory: nil)
          return block
        }
      }
      for block in made {
        if held { spec.initialize(block, seed: seed) }
        blocks.append(block)
        params += block.parameters
      }
      if let store {
        let state = ShardState(model: id, shard: s, parameters: params)
        if held { try store.admit(state) } else { store.adoptReleased(state) }
        states.append(state)
      } else {
        for p in params { for t in [p.value, p.grad] + p.state { try t.move(to: memory) } }
      }
    }
    // The blocks of a shard share one workspace: their backwards run one after another.
    for range in shards {
      let workspace = Workspace()
      for b in range { blocks[b].workspace = workspace }
    }
    self.blocks = blocks
    self.shardStates = states
    var owners: [String: (Parameter, Int)] = [:]
    for (b, block) in blocks.enumerated() {
      for p in block.parameters where p.replicaOf == nil { owners[p.name] = (p, shardOf(b)) }
    }
    var ties: [Tie] = []
    for (b, block) in blocks.enumerated() {
      for p in block.parameters {
        guard let ownerName = p.replicaOf else { continue }
        guard let (owner, ownerShard) = owners[ownerName] else {
          preconditionFailure("\(p.name) is a replica of \(ownerName), which no block owns")
        }
        ties.append(Tie(owner: owner, ownerShard: ownerShard, replica: p, replicaShard: shardOf(b)))
      }
    }
    self.ties = ties
  }

  /// Every owned parameter, in block order (the checkpoint's content).
  public var ownedParameters: [Parameter] {
    blocks.flatMap { $0.parameters.filter { $0.replicaOf == nil } }
  }

  public func parameters(ofShard s: Int) -> [Parameter] {
    shards[s].flatMap { blocks[$0].parameters }
  }

  /// Keeps each backward's gradients after it (to be read), instead of parking them (`Tensor.park`):
  /// for tests and tools that look at them.
  public var keepsGradients = false

  /// Train no further than this step in this run (a checkpoint is written there); nil: all steps.
  public var pauseAt: Int?
  /// The steps at which the selection policy compares this model with the others (an evaluation
  /// and a checkpoint are written at each).
  public var rungSteps: [Int] = []
  /// Waiting at a rung for the selection policy (`pause`): no task until it says go on.
  public var waiting = false

  /// Continues from a checkpoint: `step` steps done, with these losses so far.
  public func restore(step: Int, trainLosses: [Double], evaluations: [Evaluation]) {
    self.step = step
    position = 0
    self.trainLosses = trainLosses
    self.evaluations = evaluations
    status = step >= settings.steps ? .done : .pending
  }

  /// The next task of this model's chain, or nil when it has finished (or reached `pauseAt`).
  public var nextTask: ShardTask? {
    guard !status.isFinished, !waiting, step < settings.steps, step < (pauseAt ?? .max) else { return nil }
    return task(at: position, step: step)
  }

  /// The ties' shards: (owner, replica) for each tied weight, in tie order.
  public var tiedShards: [(owner: Int, replica: Int)] { ties.map { ($0.ownerShard, $0.replicaShard) } }

  private func task(at position: Int, step: Int) -> ShardTask { chain.task(at: position, model: index, step: step) }

  /// The task after `nextTask` (for prefetching), if the model has one.
  public var taskAfterNext: ShardTask? {
    guard nextTask != nil else { return nil }
    let next = position + 1
    if next < chain.length { return task(at: next, step: step) }
    return step + 1 < settings.steps ? task(at: 0, step: step + 1) : nil
  }

  /// Puts this copy of the model at `task`, whose earlier tasks ran in other processes (under
  /// `mpi` each rank holds a copy of every model and runs only some of its tasks). Only the chain
  /// position moves: what earlier tasks produced arrives through the backend.
  public func seek(to task: ShardTask) {
    step = task.step
    position = chain.position(of: task)
  }

  /// Advances this copy of the model past `task`, which ran in another process: the coordinator's
  /// bookkeeping of a model whose state lives elsewhere. `loss` is the training loss a last shard's
  /// forward computed. Returns true when the task completed a step.
  @discardableResult
  public func recordRemote(_ task: ShardTask, loss: Double?) -> Bool {
    precondition(task == nextTask, "\(id): \(task) finished out of order (expected \(String(describing: nextTask)))")
    status = .running
    if let loss {
      trainLosses.append(loss)
      if !loss.isFinite {
        status = .diverged(step: step)
        return false
      }
    }
    return advance(past: task)
  }

  /// Moves past `task`, which has just run (here or elsewhere); returns true when it completed a
  /// step.
  private func advance(past task: ShardTask) -> Bool {
    position += 1
    guard chain.endsStep(task) else { return false }
    position = 0
    batch = nil
    batchStep = -1
    step += 1
    if step == settings.steps { status = .done }
    return true
  }

  /// Where the state of `shard` is now (`.host` without a store).
  public func residency(of shard: Int) -> Residency {
    guard let store else { return .host }
    return store.residency(of: shardStates[shard])
  }

  /// Makes the state of `shard` resident on device `deviceIndex` (a no-op without a store).
  public func promote(_ shard: Int, to deviceIndex: Int) throws {
    guard let store else { return }
    try store.promote(shardStates[shard], to: deviceIndex, footprint: footprints[shard])
  }

  /// Starts bringing the state of `shard` onto `device` in the background (double buffering),
  /// beside the running shard's state and working set, which it never displaces.
  public func prefetch(_ shard: Int, to device: Int, keeping running: Int) {
    guard let store else { return }
    store.prefetch(shardStates[shard], to: device, pinned: [shardStates[running]])
  }

  /// The parameters and optimizer state of `shard`, in the order `readState` lays them out (or the
  /// parameters' values alone).
  private func stateTensors(of shard: Int, valuesOnly: Bool = false) -> [Tensor] {
    parameters(ofShard: shard).flatMap { [$0.value] + (valuesOnly ? [] : $0.state) }
  }

  /// Bytes of `shard`'s parameters and optimizer state: what moves when its home changes. With
  /// `valuesOnly`, of the parameters' values alone (what an evaluation needs).
  public func stateBytes(of shard: Int, valuesOnly: Bool = false) -> Int {
    guard let store else { return stateTensors(of: shard, valuesOnly: valuesOnly).reduce(0) { $0 + $1.byteCount } }
    return valuesOnly ? shardStates[shard].valueBytes : shardStates[shard].persistentBytes
  }

  /// `shard`'s parameters and optimizer state (or, `valuesOnly`, the values alone) packed into one
  /// tensor of `stateBytes(of:)` bytes, in a fixed order, wherever the host store keeps them; the
  /// tensor is charged to no device (it is on its way to another process or a file). The shard
  /// must not be running.
  public func packState(of shard: Int, valuesOnly: Bool = false) throws -> Tensor {
    let packed = try Tensor(shape: [stateBytes(of: shard, valuesOnly: valuesOnly) / MemoryLayout<Float>.stride])
    if let store {
      try store.read(shardStates[shard], into: packed, valuesOnly: valuesOnly)
    } else {
      var offset = 0
      for t in stateTensors(of: shard, valuesOnly: valuesOnly) {
        t.read(into: packed.data + offset)
        offset += t.count
      }
    }
    return packed
  }

  /// Frees every byte of `shard`'s state in this process: another process holds it (its home under
  /// `mpi`). `writeState` brings it back. A no-op without a host store.
  public func releaseState(of shard: Int) {
    store?.release(shardStates[shard])
  }

  /// Overwrites `shard`'s parameters and optimizer state with a tensor `packState` made (in
  /// another process holding the same model). Throws, changing nothing, when its size is not the
  /// shard's. The shard must not be running.
  public func unpackState(of shard: Int, from packed: Tensor, valuesOnly: Bool = false) throws {
    let expected = stateBytes(of: shard, valuesOnly: valuesOnly)
    guard packed.byteCount == expected else {
      throw RuntimeError(
        "\(id) shard \(shard): a packed state of \(packed.byteCount) bytes, where the shard holds \(expected)")
    }
    if let store { return try store.write(shardStates[shard], from: packed, valuesOnly: valuesOnly) }
    var offset = 0
    for t in stateTensors(of: shard, valuesOnly: valuesOnly) {
      t.write(from: packed.data + offset)
      offset += t.count
    }
  }

  private func key(_ kind: TransferKey.Kind, _ index: Int, _ step: Int) -> TransferKey {
    TransferKey(kind, model: self.index, index: index, step: step)
  }

  /// Runs `task`, which must be `nextTask`, on `kernels` of device `device`. Returns true when it
  /// completed a step.
  ///
  /// Where the device has a working set (`kernels.memory.parent`), the task's shard state is made
  /// resident and the working set opened with the shard's planned bytes before anything runs;
  /// everything the task allocates is charged there, and when it ends what the model keeps for
  /// later tasks goes to the host store and the working set is closed, empty.
  @discardableResult
  public func run(_ task: ShardTask, kernels: Kernels, device: Int = 0) throws -> Bool {
    precondition(task == nextTask, "\(id): ran \(task) out of order (expected \(String(describing: nextTask)))")
    status = .running
    let s = task.shard
    try begin(shard: s, kernels: kernels, device: device)
    if policy.prefetch, let after = taskAfterNext, after.shard != s {
      prefetch(after.shard, to: device, keeping: s)
    }
    let completed: Bool
    do {
      completed = try runTask(task, kernels: kernels, device: device)
    } catch {
      try? end(shard: s, kernels: kernels, failed: true)
      throw error
    }
    // A plugin may still be computing on its device: the task ends when its work does.
    kernels.memory.buffers?.synchronize()
    try end(shard: s, kernels: kernels, failed: false)
    return completed
  }

  /// Whether `kernels` charge a working set opened per task (a device of the job), rather than a
  /// plain memory (tests that run a model alone).
  private func hasWorkingSet(_ kernels: Kernels) -> Bool { kernels.memory.parent != nil && store != nil }

  private func begin(shard s: Int, kernels: Kernels, device: Int) throws {
    touched = [:]
    discarded = []
    if hasWorkingSet(kernels) {
      try store!.beginTask(shardStates[s], on: device, workingSet: kernels.memory, bytes: workingSets[s])
    } else {
      try promote(s, to: device)
    }
  }

  /// The task on shard `s` ended: what it posted or fetched that later tasks need goes to the host
  /// store, the rest is let go, and the working set closes. Throws when a tensor of the task is
  /// still charged to it (the footprint model and the runtime disagree).
  private func end(shard s: Int, kernels: Kernels, failed: Bool) throws {
    let memory = kernels.memory
    let working = hasWorkingSet(kernels)
    if working { store!.endTask(shardStates[s]) }
    if store != nil {
      for (key, t) in touched {
        if !failed && !discarded.contains(key) && backend.tensorsStayInProcess {
          held[key] = try store!.hold([t], model: id, label: "\(key.kind)\(key.index)")
        } else if working {
          // Sent to another process, or dropped: no longer this task's to account for.
          try? t.move(to: nil)
        }
      }
    }
    touched = [:]
    discarded = []
    guard working else { return }
    measuredWorkingSets[s] = max(measuredWorkingSets[s], memory.peak)
    let left = memory.close()
    if left != 0 && !failed {
      throw RuntimeError(
        "\(id) shard \(s): \(formatBytes(left)) still charged to \(memory.label) after its task ended (a tensor the runtime does not account for)"
      )
    }
  }

  /// Posts `tensor` (made by the running task) for a task of shard `consumer`.
  private func post(_ tensor: Tensor, _ key: TransferKey, device: Int, for consumer: Int) throws {
    try backend.post(tensor, key: key, from: device, for: consumer)
    touched[key] = tensor
  }

  /// The tensor posted as `key`, resident and charged to the running task's memory.
  private func fetch(_ key: TransferKey, device: Int, memory: DeviceMemory) throws -> Tensor {
    if let t = touched[key] { return t }
    let t = try backend.fetch(key, to: device)
    if let entry = held.removeValue(forKey: key) {
      try store!.take(entry, into: memory)
    } else if t.memory == nil && store != nil && memory.parent != nil {
      try t.move(to: memory)  // arrived from another process, charged nowhere yet
    }
    touched[key] = t
    return t
  }

  private func discard(_ key: TransferKey) {
    backend.discard(key)
    discarded.insert(key)
    if let entry = held.removeValue(forKey: key) { store?.forget(entry) }
  }

  /// Whether a task's block buffers are freed when it ends: always on a device with a working set.
  private func releasing(_ kernels: Kernels) -> Bool { policy.releaseBuffers || hasWorkingSet(kernels) }

  private func runTask(_ task: ShardTask, kernels: Kernels, device: Int) throws -> Bool {
    let k = shards.count
    let s = task.shard
    let memory = kernels.memory
    // A pure function of (seed, step): made again wherever this step's earlier tasks ran elsewhere.
    if batchStep != step {
      batch = data.trainBatch(step: step, batchSize: settings.batchSize, seed: seed, shuffle: settings.shuffle)
      batchStep = step
    }
    switch task.direction {
    case .forward:
      let out = try forward(shard: s, batch: batch!, kernels: kernels, device: device, training: true)
      if s == k - 1 {
        let loss = try (blocks[shards[s].upperBound - 1] as! LossBlock)
          .loss(targets: batch!.targets, kernels: kernels, keepGradient: true).loss
        trainLosses.append(loss)
        if !loss.isFinite {
          status = .diverged(step: step)
          discardStep()
          if releasing(kernels) { for b in blocks { b.releaseBuffers() } }
          return false
        }
      } else {
        try post(try copy(out, kernels: kernels), key(.activation, s, step), device: device, for: s + 1)
      }
      if policy.checkpointing && s < k - 1 {
        release(shard: s)
      } else {
        // Scratch goes; what the backward reads waits in the host store.
        shards[s].forEach { blocks[$0].workspace.release() }
        if let store, hasWorkingSet(kernels) || policy.releaseBuffers {
          kept[s] = try store.hold(
            shards[s].flatMap { blocks[$0].keptTensors }, model: id, label: "kept\(s)")
        }
      }
      return advance(past: task)
    case .backward:
      // The shard's gradients, zero: pages given back by the last backward on this device.
      for p in parameters(ofShard: s) {
        if p.grad.isParked { p.grad.unpark() } else { kernels.fill(p.grad.data, value: 0, count: p.count) }
      }
      if let entry = kept.removeValue(forKey: s) { try store!.take(entry, into: memory) }
      if policy.checkpointing && s < k - 1 {
        // Recompute what the forward released.
        _ = try forward(shard: s, batch: batch!, kernels: kernels, device: device, training: false)
      } else if s > 0 {
        // The first block reads its input again: bring it back from the store.
        _ = try fetch(key(.activation, s - 1, step), device: device, memory: memory)
      }
      var grad = s == k - 1 ? nil : try fetch(key(.gradient, s, step), device: device, memory: memory)
      for b in shards[s].reversed() { grad = try blocks[b].backward(grad, kernels: kernels) }
      // A tied weight's two gradients: the owner's own, then the replica's, in that fixed order.
      for (t, tie) in ties.enumerated() {
        if tie.replicaShard == s {
          try post(
            try copy(tie.replica.grad, kernels: kernels), key(.tiedGradient, t, step), device: device,
            for: tie.ownerShard)
        }
        if tie.ownerShard == s {
          let g = try fetch(key(.tiedGradient, t, step), device: device, memory: memory)
          kernels.accumulate(g.data, into: tie.owner.grad.data, count: g.count)
          discard(key(.tiedGradient, t, step))
        }
      }
      try settings.optimizer.apply(to: parameters(ofShard: s), step: step, kernels: kernels)
      if s > 0 {
        try post(try copy(grad!, kernels: kernels), key(.gradient, s - 1, step), device: device, for: s - 1)
      }
      if s < k - 1 { discard(key(.gradient, s, step)) }
      if s > 0 { discard(key(.activation, s - 1, step)) }
      if releasing(kernels) { release(shard: s) }
      // Used up: their pages go to the next backward on this device, of this model or another.
      if !keepsGradients { for p in parameters(ofShard: s) { p.grad.park() } }
      return advance(past: task)
    }
  }

  /// Stopping a run (SIGTERM): before any backward of the current step has run (so no optimizer
  /// has stepped), the step is dropped as if it never started: what it posted and kept is let go,
  /// and a loss it recorded is taken back. Returns false, changing nothing, once a backward ran
  /// (the step must then be finished).
  @discardableResult
  public func dropCurrentStep() -> Bool {
    let k = shards.count
    guard position > 0 else { return true }
    guard position <= k else { return false }
    discardStep()
    if position == k && trainLosses.count > step { trainLosses.removeLast() }
    touched = [:]
    discarded = []
    position = 0
    batch = nil
    batchStep = -1
    return true
  }

  /// Whatever this step posted that no task will take any more (a model that stopped mid-step).
  private func discardStep() {
    for s in 0..<shards.count {
      discard(key(.activation, s, step))
      discard(key(.gradient, s, step))
    }
    for t in ties.indices {
      discard(key(.tiedValue, t, step))
      discard(key(.tiedGradient, t, step))
    }
    for entry in kept.values { store?.forget(entry) }
    kept = [:]
  }

  /// The forward of shard `s`'s blocks from its input (the previous shard's posted output, or the
  /// batch), with tied values passed along. Returns the last block's output. `training` false is a
  /// recomputation: nothing is posted again.
  private func forward(shard s: Int, batch: Batch, kernels: Kernels, device: Int, training: Bool) throws -> Tensor {
    // A recomputation finds the replica's value in place from the training forward.
    for (t, tie) in ties.enumerated() where training {
      if tie.ownerShard == s {
        try post(
          try copy(tie.owner.value, kernels: kernels), key(.tiedValue, t, step), device: device,
          for: tie.replicaShard)
      }
      if tie.replicaShard == s {
        let v = try fetch(key(.tiedValue, t, step), device: device, memory: kernels.memory)
        kernels.copy(v.data, tie.replica.value.data, count: v.count)
        discard(key(.tiedValue, t, step))
      }
    }
    var act = s == 0 ? nil : try fetch(key(.activation, s - 1, step), device: device, memory: kernels.memory)
    for b in shards[s] { act = try blocks[b].forward(BlockInput(activation: act, batch: batch), kernels: kernels) }
    return act!
  }

  private func release(shard s: Int) {
    for b in shards[s] { blocks[b].releaseBuffers() }
  }

  private func copy(_ t: Tensor, kernels: Kernels) throws -> Tensor {
    let c = try kernels.allocate(t.shape, zeroed: false)  // written whole below
    kernels.copy(t.data, c.data, count: t.count)
    return c
  }

  /// An evaluation of this model made in another process (it ran where the step did).
  public func record(_ evaluation: Evaluation) {
    evaluations.append(evaluation)
  }

  /// Whether the evaluation/checkpoint cadence falls on the step just completed.
  public var evaluationDue: Bool {
    step == settings.steps || (settings.evalEvery > 0 && step % settings.evalEvery == 0) || atRung
  }
  public var checkpointDue: Bool {
    step == settings.steps || step == pauseAt || (settings.checkpointEvery > 0 && step % settings.checkpointEvery == 0)
      || atRung
  }
  /// Whether the step just completed is one of the model's rungs.
  public var atRung: Bool { rungSteps.contains(step) }

  /// The selection policy stopped the model where it is: it trains no further, and its state
  /// leaves this process (its last checkpoint, written at the rung, is its result).
  public func stopBySelection() {
    status = .stopped(step: step)
    waiting = false
    for s in shards.indices { releaseState(of: s) }
  }

  /// Waiting at a rung: the model's shard states leave the devices for the host store (RAM, then
  /// disk), so that waiting takes no device memory.
  public func demoteState() throws {
    guard let store else { return }
    for state in shardStates { try store.demote(state) }
  }

  /// Mean validation loss and accuracy (per prediction: per token for `gpt`, per row for `mlp`)
  /// over at most `evalBatches` batches of the validation split, shard by shard on `device`.
  /// Parameters are not touched.
  @discardableResult
  public func evaluate(kernels: Kernels, device: Int = 0) throws -> Evaluation {
    var lossSum = 0.0, correct = 0, count = 0
    let k = shards.count
    let memory = kernels.memory
    // One device runs the whole evaluation, shard after shard, each a task of its own (its state
    // promoted, its working set opened). What passes from one shard to the next (the boundary
    // activation, and the tied value taken from the owner before its shard may leave the device)
    // waits in the host store in between, as in training.
    var tied: [ShardState?] = Array(repeating: nil, count: ties.count)
    var tiedTensors: [Tensor?] = Array(repeating: nil, count: ties.count)
    defer { for e in tied.compactMap({ $0 }) { store?.forget(e) } }
    for batch in data.validationBatches(batchSize: settings.batchSize, limit: settings.evalBatches) {
      var input: (tensor: Tensor, entry: ShardState?)? = nil
      for s in 0..<k {
        try begin(shard: s, kernels: kernels, device: device)
        var ok = false
        defer { if !ok { try? end(shard: s, kernels: kernels, failed: true) } }
        if let entry = input?.entry { try store!.take(entry, into: memory) }
        var used: [Int] = []
        for (t, tie) in ties.enumerated() {
          if tie.ownerShard == s && tiedTensors[t] == nil {
            tiedTensors[t] = try copy(tie.owner.value, kernels: kernels)
            used.append(t)
          }
          if tie.replicaShard == s, let v = tiedTensors[t] {
            if let e = tied[t] {
              try store!.take(e, into: memory)
              tied[t] = nil
              used.append(t)
            }
            kernels.copy(v.data, tie.replica.value.data, count: v.count)
          }
        }
        var act = input?.tensor
        for b in shards[s] { act = try blocks[b].forward(BlockInput(activation: act, batch: batch), kernels: kernels) }
        var output: Tensor?
        if s < k - 1 {
          output = try copy(act!, kernels: kernels)
        } else {
          let r = try (blocks.last as! LossBlock).loss(targets: batch.targets, kernels: kernels, keepGradient: false)
          lossSum += r.loss * Double(r.count)
          correct += r.correct
          count += r.count
        }
        act = nil
        if releasing(kernels) { release(shard: s) }
        // This shard's input is spent; its output and the tied values it used wait in the store.
        if let old = input?.tensor, hasWorkingSet(kernels) { try old.move(to: nil) }
        input = nil
        if let output { input = (output, try stash(output, label: "eval\(s)", kernels: kernels)) }
        for t in Set(used) { tied[t] = try stash(tiedTensors[t]!, label: "evaltied\(t)", kernels: kernels) }
        ok = true
        try end(shard: s, kernels: kernels, failed: false)
      }
    }
    let e = Evaluation(
      step: step, loss: count > 0 ? lossSum / Double(count) : .nan,
      accuracy: count > 0 ? Double(correct) / Double(count) : .nan)
    evaluations.append(e)
    return e
  }

  /// Puts a tensor an evaluation passes between shards into the host store (when the device
  /// has a working set: otherwise it simply stays where it is).
  private func stash(_ t: Tensor, label: String, kernels: Kernels) throws -> ShardState? {
    guard hasWorkingSet(kernels) else { return nil }
    return try store!.hold([t], model: id, label: label)
  }

  /// Each parameter of `shard` that is not a replica, with its value (`part` 0) and then its
  /// optimizer state (`part` 1, 2, ...) as host values, read where the host store keeps them,
  /// moving nothing (`HostStore.readInPlace`): a checkpoint written off the device threads while
  /// the model is held from running. A state still on a device comes off it first (demote the
  /// model's state on its device's thread to free the device's room at once: `demoteState`).
  public func readStateInPlace(
    ofShard s: Int, _ body: (_ parameter: Parameter, _ part: Int, UnsafeBufferPointer<Float>) throws -> Void
  ) throws {
    let parameters = self.parameters(ofShard: s)
    guard let store else {
      for p in parameters where p.replicaOf == nil {
        for (i, t) in ([p.value] + p.state).enumerated() { try t.withHostBuffer { try body(p, i, $0) } }
      }
      return
    }
    // The state's tensors are each parameter's value and then its optimizer state, in order.
    var parameter = 0, part = 0
    try store.readInPlace(shardStates[s]) { values in
      while part > parameters[parameter].state.count {
        parameter += 1
        part = 0
      }
      let p = parameters[parameter]
      if p.replicaOf == nil { try body(p, part, values) }
      part += 1
    }
  }

  /// Every shard's state in turn on `device` (for writing a checkpoint), in block order.
  /// With `heldHere`, the shards another process holds (`mpi`) are left out (loading a checkpoint:
  /// each process loads what it holds); without, they are an error (writing a checkpoint needs them
  /// gathered first).
  public func withEveryShard(on device: Int, heldHere: Bool = false, _ body: (Int) throws -> Void) throws {
    for s in 0..<shards.count {
      if heldHere && residency(of: s) == .elsewhere { continue }
      try promote(s, to: device)
      try body(s)
    }
  }
}
