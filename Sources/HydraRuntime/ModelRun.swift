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
  public var name: String {
    switch self {
    case .pending: return "pending"
    case .running: return "running"
    case .done: return "done"
    case .diverged: return "diverged"
    }
  }
  public var isFinished: Bool { self == .done || name == "diverged" }
}

public struct Evaluation: Sendable {
  public var step: Int
  public var loss: Double
  public var accuracy: Double
}

/// One member of a job in training: its blocks cut into shards, and where it stands in its chain of
/// shard tasks. A step is the strict chain forward 0 ..< k, loss, backward k-1 ... 0; each shard's
/// optimizer steps right after that shard's backward.
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
  /// (owner, replica) of every tied parameter, with the shards holding each.
  private let ties: [(owner: Parameter, ownerShard: Int, replica: Parameter, replicaShard: Int)]

  public private(set) var status: ModelStatus = .pending
  /// Completed steps.
  public private(set) var step = 0
  /// Position in the current step's chain: 0 ..< 2k.
  private var position = 0
  private var batch: Batch?
  /// The activation (forward) or its gradient (backward) handed from one shard task to the next.
  private var boundary: Tensor?

  public private(set) var trainLosses: [Double] = []
  public private(set) var evaluations: [Evaluation] = []
  public var seconds: Double = 0

  /// Builds and initialises every block on `memory`.
  public init(
    index: Int, id: String, spec: ModelSpec, seed: UInt64, settings: TrainSettings,
    data: BatchSource, shards: [Range<Int>], memory: DeviceMemory
  ) throws {
    precondition(shards.first?.lowerBound == 0 && shards.last?.upperBound == spec.blockCount)
    self.index = index
    self.id = id
    self.spec = spec
    self.seed = seed
    self.settings = settings
    self.data = data
    self.shards = shards
    var blocks: [Block] = []
    for i in 0..<spec.blockCount {
      let block = try spec.makeBlock(i, memory: memory)
      spec.initialize(block, seed: seed)
      blocks.append(block)
    }
    self.blocks = blocks
    func shardOf(_ block: Int) -> Int { shards.firstIndex { $0.contains(block) }! }
    var owners: [String: (Parameter, Int)] = [:]
    for (b, block) in blocks.enumerated() {
      for p in block.parameters where p.replicaOf == nil { owners[p.name] = (p, shardOf(b)) }
    }
    var ties: [(Parameter, Int, Parameter, Int)] = []
    for (b, block) in blocks.enumerated() {
      for p in block.parameters {
        guard let ownerName = p.replicaOf else { continue }
        guard let (owner, ownerShard) = owners[ownerName] else {
          preconditionFailure("\(p.name) is a replica of \(ownerName), which no block owns")
        }
        ties.append((owner, ownerShard, p, shardOf(b)))
      }
    }
    self.ties = ties.map { (owner: $0.0, ownerShard: $0.1, replica: $0.2, replicaShard: $0.3) }
  }

  /// Every owned parameter, in block order (the checkpoint's content).
  public var ownedParameters: [Parameter] {
    blocks.flatMap { $0.parameters.filter { $0.replicaOf == nil } }
  }

  public func parameters(ofShard s: Int) -> [Parameter] {
    shards[s].flatMap { blocks[$0].parameters }
  }

  /// The next task of this model's chain, or nil when it has finished.
  public var nextTask: ShardTask? {
    guard !status.isFinished, step < settings.steps else { return nil }
    let k = shards.count
    if position < k { return ShardTask(model: index, shard: position, direction: .forward, step: step) }
    return ShardTask(model: index, shard: 2 * k - 1 - position, direction: .backward, step: step)
  }

  /// Runs `task`, which must be `nextTask`, on `kernels`. Returns true when it completed a step.
  @discardableResult
  public func run(_ task: ShardTask, kernels: Kernels) throws -> Bool {
    precondition(task == nextTask, "\(id): ran \(task) out of order (expected \(String(describing: nextTask)))")
    status = .running
    let k = shards.count
    let range = shards[task.shard]
    switch task.direction {
    case .forward:
      if task.shard == 0 {
        batch = data.trainBatch(step: step, batchSize: settings.batchSize, seed: seed, shuffle: settings.shuffle)
        boundary = nil
      }
      syncReplicas(intoShard: task.shard, kernels: kernels)
      var act = boundary
      for b in range { act = try blocks[b].forward(BlockInput(activation: act, batch: batch!), kernels: kernels) }
      boundary = act
      if task.shard == k - 1 {
        let loss = try (blocks[range.upperBound - 1] as! LossBlock)
          .loss(targets: batch!.targets, kernels: kernels, keepGradient: true).loss
        trainLosses.append(loss)
        if !loss.isFinite {
          status = .diverged(step: step)
          boundary = nil
          return false
        }
        boundary = nil
      }
      position += 1
      return false
    case .backward:
      for p in parameters(ofShard: task.shard) { kernels.fill(p.grad.data, value: 0, count: p.count) }
      var grad = boundary
      for b in range.reversed() { grad = try blocks[b].backward(grad, kernels: kernels) }
      // A tied weight's two gradients: the owner's own, then the replica's, in that fixed order.
      for tie in ties where tie.ownerShard == task.shard {
        kernels.accumulate(tie.replica.grad.data, into: tie.owner.grad.data, count: tie.owner.count)
      }
      try settings.optimizer.apply(to: parameters(ofShard: task.shard), step: step, kernels: kernels)
      boundary = grad
      position += 1
      guard task.shard == 0 else { return false }
      position = 0
      boundary = nil
      batch = nil
      step += 1
      if step == settings.steps { status = .done }
      return true
    }
  }

  /// Before a shard's forward, its replicas take their owners' current values.
  private func syncReplicas(intoShard s: Int, kernels: Kernels) {
    for tie in ties where tie.replicaShard == s {
      kernels.copy(tie.owner.value.data, tie.replica.value.data, count: tie.owner.count)
    }
  }

  /// Whether the evaluation/checkpoint cadence falls on the step just completed.
  public var evaluationDue: Bool {
    step == settings.steps || (settings.evalEvery > 0 && step % settings.evalEvery == 0)
  }
  public var checkpointDue: Bool {
    step == settings.steps || (settings.checkpointEvery > 0 && step % settings.checkpointEvery == 0)
  }

  /// Mean validation loss and accuracy (per prediction: per token for `gpt`, per row for `mlp`)
  /// over at most `evalBatches` batches of the validation split. Parameters are not touched.
  @discardableResult
  public func evaluate(kernels: Kernels) throws -> Evaluation {
    for s in 0..<shards.count { syncReplicas(intoShard: s, kernels: kernels) }
    var lossSum = 0.0, correct = 0, count = 0
    for batch in data.validationBatches(batchSize: settings.batchSize, limit: settings.evalBatches) {
      var act: Tensor? = nil
      for block in blocks { act = try block.forward(BlockInput(activation: act, batch: batch), kernels: kernels) }
      let r = try (blocks.last as! LossBlock).loss(targets: batch.targets, kernels: kernels, keepGradient: false)
      lossSum += r.loss * Double(r.count)
      correct += r.correct
      count += r.count
    }
    let e = Evaluation(
      step: step, loss: count > 0 ? lossSum / Double(count) : .nan,
      accuracy: count > 0 ? Double(correct) / Double(count) : .nan)
    evaluations.append(e)
    return e
  }
}
