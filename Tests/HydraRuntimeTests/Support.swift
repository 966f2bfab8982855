import Foundation
import HydraCore
import HydraRuntime

/// Random tokens from a seeded generator; every step its own batch, a pure function of (seed, step).
final class RandomTokens: BatchSource {
  let vocab: Int, context: Int
  init(vocab: Int, context: Int) {
    self.vocab = vocab
    self.context = context
  }
  func batch(_ seed: UInt64, rows: Int) -> Batch {
    var rng = SplitMix64(seed: seed)
    let n = rows * context
    return Batch(
      rows: rows, tokens: (0..<n).map { _ in Int32(rng.nextInt(below: vocab)) },
      targets: (0..<n).map { _ in Int32(rng.nextInt(below: vocab)) })
  }
  func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch {
    batch(derivedSeed(seed, UInt64(step)), rows: batchSize)
  }
  func validationBatches(batchSize: Int, limit: Int?) -> [Batch] { [batch(99, rows: batchSize)] }
}

/// The same batch at every step: for overfitting.
final class OneBatch: BatchSource {
  let fixed: Batch
  init(_ batch: Batch) { fixed = batch }
  func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch { fixed }
  func validationBatches(batchSize: Int, limit: Int?) -> [Batch] { [fixed] }
}

/// Random features with labels from a fixed random linear rule: learnable, not trivial.
final class RandomTable: BatchSource {
  let features: Int, classes: Int
  init(features: Int, classes: Int) {
    self.features = features
    self.classes = classes
  }
  func batch(_ seed: UInt64, rows: Int) -> Batch {
    var rng = SplitMix64(seed: seed)
    let x = (0..<(rows * features)).map { _ in Float(rng.nextNormal()) }
    let labels = (0..<rows).map { r in Int32(abs(Int(x[r * features] * 3)) % classes) }
    return Batch(rows: rows, features: x, targets: labels)
  }
  func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch {
    batch(derivedSeed(seed, UInt64(step)), rows: batchSize)
  }
  func validationBatches(batchSize: Int, limit: Int?) -> [Batch] { [batch(7, rows: batchSize)] }
}

/// Cuts `blocks` blocks into shards of the given sizes.
func shards(_ sizes: [Int]) -> [Range<Int>] {
  var start = 0
  return sizes.map { size in
    defer { start += size }
    return start..<(start + size)
  }
}

func train(_ run: ModelRun, kernels: Kernels) throws {
  while let task = run.nextTask { try run.run(task, kernels: kernels) }
}

/// Every parameter value and optimizer state tensor, bit for bit.
func snapshot(_ run: ModelRun) -> [String: [UInt32]] {
  var out: [String: [UInt32]] = [:]
  for p in run.ownedParameters {
    out[p.name] = p.value.array.map(\.bitPattern)
    for (i, s) in p.state.enumerated() { out["\(p.name)#state\(i)"] = s.array.map(\.bitPattern) }
  }
  return out
}

/// The ways the sharding tests cut, spill and recompute a job (the same job must end bit for bit
/// alike under each): two partitioners x activation checkpointing on or off x the host store's
/// budget large or 1 byte (everything spills), one block per shard, fixed boundaries [1, 3] with
/// spilling, half the budget without double buffering, and a measured profile. `budget` is the device
/// budget with double buffering (it forces several shards); `half` the same shard budget without.
func shardingVariants(budget: String, half: String) -> [[String]] {
  var out: [[String]] = []
  for partitioner in ["balanced", "memory-greedy"] {
    for checkpointing in ["true", "false"] {
      for host in [[], ["cluster.host_memory=1"]] {
        out.append(
          [
            "cluster.device_memory=\(budget)", "partitioner.name=\"\(partitioner)\"",
            "cluster.activation_checkpointing=\(checkpointing)",
          ] + host)
      }
    }
  }
  out.append(["partitioner.name=\"fixed\"", "partitioner.blocks_per_shard=1"])
  out.append(["partitioner.name=\"fixed\"", "partitioner.boundaries=[1, 3]", "cluster.host_memory=1"])
  out.append(["cluster.device_memory=\(half)", "cluster.double_buffering=false", "cluster.host_memory=1"])
  out.append(["cluster.device_memory=\(budget)", "partitioner.profile_steps=2"])
  return out
}
