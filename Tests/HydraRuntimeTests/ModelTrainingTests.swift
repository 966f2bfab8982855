import Foundation
import HydraBackendSHM
import HydraCore
import HydraKernelsReference
import HydraRuntime
import XCTest

final class ModelTrainingTests: XCTestCase {
  let kernels = ReferenceKernels()
  let small = GPTShape(layers: 2, channels: 16, heads: 2, context: 8, vocab: 64)

  func makeRun(
    _ spec: ModelSpec, data: BatchSource, shards: [Range<Int>], steps: Int, batch: Int = 4,
    optimizer: Optimizer? = nil
  ) throws -> ModelRun {
    let opt =
      optimizer
      ?? Optimizer(kind: .adamw, lr: 3e-3, weightDecay: 0.1, schedule: .cosine, warmupSteps: 2, totalSteps: steps)
    return try ModelRun(
      index: 0, id: "m000", spec: spec, seed: 42,
      settings: TrainSettings(steps: steps, batchSize: batch, optimizer: opt),
      data: data, shards: shards, backend: SharedMemoryBackend(devices: 1), memory: kernels.memory)
  }

  func testGPTLossAtInitialisationIsNearLogVocab() throws {
    let shape = GPTShape(layers: 2, channels: 32, heads: 4, context: 16, vocab: 256)
    let run = try makeRun(.gpt(shape), data: RandomTokens(vocab: 256, context: 16), shards: [0..<4], steps: 1, batch: 4)
    try run.run(run.nextTask!, kernels: kernels)
    // Weights of std 0.02 give logits of std ~0.1: the softmax is nearly uniform.
    XCTAssertEqual(run.trainLosses[0], log(256.0), accuracy: 0.05)
  }

  func testGPTOverfitsOneBatch() throws {
    let source = RandomTokens(vocab: 64, context: 8)
    let batch = source.batch(5, rows: 2)
    let run = try makeRun(
      .gpt(small), data: OneBatch(batch), shards: [0..<4], steps: 120, batch: 2,
      optimizer: Optimizer(kind: .adamw, lr: 1e-2, totalSteps: 120))
    try train(run, kernels: kernels)
    XCTAssertGreaterThan(run.trainLosses[0], 3.5)
    XCTAssertLessThan(run.trainLosses.last!, 0.05)
  }

  func testMLPOverfitsOneBatchWithSGD() throws {
    let spec = ModelSpec.mlp(inputs: 5, hidden: [32], classes: 3)
    let batch = RandomTable(features: 5, classes: 3).batch(3, rows: 8)
    let run = try makeRun(
      spec, data: OneBatch(batch), shards: [0..<2], steps: 300, batch: 8,
      optimizer: Optimizer(kind: .sgd, lr: 0.1, momentum: 0.9, totalSteps: 300))
    try train(run, kernels: kernels)
    XCTAssertLessThan(run.trainLosses.last!, 0.01)
    XCTAssertEqual(try run.evaluate(kernels: kernels).accuracy, 1.0)
  }

  /// The exactness invariant for shards: cutting a model differently changes nothing, bit for bit,
  /// including the tied embedding/head when they sit in different shards.
  func testShardingLeavesGPTWeightsBitwiseIdentical() throws {
    let data = RandomTokens(vocab: 64, context: 8)
    let whole = try makeRun(.gpt(small), data: data, shards: shards([4]), steps: 4)
    try train(whole, kernels: kernels)
    for sizes in [[1, 3], [2, 2], [1, 1, 1, 1], [3, 1]] {
      let cut = try makeRun(.gpt(small), data: data, shards: shards(sizes), steps: 4)
      try train(cut, kernels: kernels)
      XCTAssertEqual(snapshot(cut), snapshot(whole), "shards \(sizes)")
      XCTAssertEqual(cut.trainLosses, whole.trainLosses)
    }
  }

  func testShardingLeavesMLPWeightsBitwiseIdentical() throws {
    let spec = ModelSpec.mlp(inputs: 6, hidden: [8, 7], classes: 4)
    let data = RandomTable(features: 6, classes: 4)
    let sgd = Optimizer(kind: .sgd, lr: 0.05, weightDecay: 0.01, totalSteps: 5)
    let whole = try makeRun(spec, data: data, shards: shards([3]), steps: 5, optimizer: sgd)
    try train(whole, kernels: kernels)
    for sizes in [[1, 2], [1, 1, 1], [2, 1]] {
      let cut = try makeRun(spec, data: data, shards: shards(sizes), steps: 5, optimizer: sgd)
      try train(cut, kernels: kernels)
      XCTAssertEqual(snapshot(cut), snapshot(whole), "shards \(sizes)")
    }
  }

  /// The tie itself: after training, the head's replica equals the embedding it copies, and the
  /// embedding received the head's gradient (it differs from a run where the head's gradient is
  /// lost, which the 0.02-scale embedding gradient alone cannot reproduce).
  func testTiedEmbeddingReceivesTheHeadGradient() throws {
    let data = RandomTokens(vocab: 64, context: 8)
    let run = try makeRun(
      .gpt(small), data: data, shards: shards([2, 2]), steps: 1,
      optimizer: Optimizer(kind: .sgd, lr: 1, momentum: 0, totalSteps: 1))
    run.keepsGradients = true  // read below
    let before = run.ownedParameters.first { $0.name == "wte.weight" }!.value.array
    try train(run, kernels: kernels)
    let wte = run.ownedParameters.first { $0.name == "wte.weight" }!
    let replica = run.blocks.last!.parameters.first { $0.replicaOf != nil }!
    // With SGD lr 1, the update is -(own gradient + head gradient).
    for i in 0..<wte.count {
      XCTAssertEqual(before[i] - wte.grad[i], wte.value[i], accuracy: 1e-6)
    }
    // Rows of tokens that never occur as inputs get no embedding gradient: only the head's.
    let inputs = Set(data.trainBatch(step: 0, batchSize: 4, seed: 42, shuffle: true).tokens)
    let unused = (0..<64).first { !inputs.contains(Int32($0)) }!
    for c in 0..<16 {
      XCTAssertEqual(wte.grad[unused * 16 + c], replica.grad[unused * 16 + c])
      XCTAssertNotEqual(replica.grad[unused * 16 + c], 0)
    }
  }
}
