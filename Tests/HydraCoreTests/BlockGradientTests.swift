import HydraCore
import HydraKernelsReference
import XCTest

/// Every block's backward against central finite differences of its forward.
///
/// The checked function is f = <forward(x), R> for a fixed random R (so backward(R) is df/dx),
/// or the block's own loss for the last block. f is summed in Double; the reference kernels
/// accumulate in Double too, so the remaining noise is Float storage (~1e-7 relative), which a step
/// of 1e-2 turns into ~1e-5 of the derivative: the tolerance below is far above that and far below
/// any real mistake (a wrong term changes a derivative by O(1) of itself).
final class BlockGradientTests: XCTestCase {
  let kernels = ReferenceKernels()

  func testTransformerBlockGradients() throws {
    let shape = GPTShape(layers: 2, channels: 8, heads: 2, context: 5, vocab: 11)
    let spec = ModelSpec.gpt(shape)
    let block = try spec.makeBlock(1, memory: kernels.memory)
    perturbNorms(block, seed: 3)
    spec.initialize(block, seed: 1)
    scaleUp(block)
    let batch = tokenBatch(rows: 2, shape: shape, seed: 4)
    try checkGradients(block, batch: batch, inputShape: [2, 5, 8], seed: 9)
  }

  func testEmbeddingBlockGradients() throws {
    let shape = GPTShape(layers: 1, channels: 6, heads: 2, context: 4, vocab: 7)
    let spec = ModelSpec.gpt(shape)
    let block = try spec.makeBlock(0, memory: kernels.memory)
    spec.initialize(block, seed: 2)
    // Repeated tokens make the scatter-add accumulate.
    let batch = Batch(rows: 2, tokens: [1, 3, 1, 1, 6, 0, 3, 3], features: [], targets: [])
    try checkGradients(block, batch: batch, inputShape: nil, seed: 5)
  }

  func testGPTHeadGradientsThroughTheLoss() throws {
    let shape = GPTShape(layers: 1, channels: 6, heads: 2, context: 4, vocab: 7)
    let spec = ModelSpec.gpt(shape)
    let head = try spec.makeBlock(2, memory: kernels.memory)
    perturbNorms(head, seed: 6)
    // The replica gets values of its own here; in a model the runtime copies them from `wte`.
    var rng = SplitMix64(seed: 8)
    for p in head.parameters where p.replicaOf != nil {
      for i in 0..<p.count { p.value[i] = Float(rng.nextNormal()) * 0.5 }
    }
    let batch = tokenBatch(rows: 2, shape: shape, seed: 7)
    try checkGradients(head, batch: batch, inputShape: [2, 4, 6], seed: 10)
  }

  func testMLPBlocksGradients() throws {
    let spec = ModelSpec.mlp(inputs: 7, hidden: [6, 5], classes: 4)
    var rng = SplitMix64(seed: 11)
    let features = (0..<(3 * 7)).map { _ in Float(rng.nextNormal()) }
    let batch = Batch(rows: 3, tokens: [], features: features, targets: [0, 3, 2])
    for index in 0..<3 {
      let block = try spec.makeBlock(index, memory: kernels.memory)
      spec.initialize(block, seed: 12)
      let widths = [7, 6, 5]
      try checkGradients(
        block, batch: batch, inputShape: index == 0 ? nil : [3, widths[index]], seed: 13 + UInt64(index))
    }
  }

  // MARK: - The check

  private func checkGradients(_ block: Block, batch: Batch, inputShape: [Int]?, seed: UInt64) throws {
    var rng = SplitMix64(seed: seed)
    let input = try inputShape.map { shape -> Tensor in
      let t = try Tensor(shape: shape)
      for i in 0..<t.count { t[i] = Float(rng.nextNormal()) }
      return t
    }
    let lossBlock = block as? LossBlock
    // Forward once to learn the output size, then fix R.
    let y0 = try block.forward(BlockInput(activation: input, batch: batch), kernels: kernels)
    let r = try Tensor(shape: y0.shape)
    for i in 0..<r.count { r[i] = Float(rng.nextNormal()) }

    func f() throws -> Double {
      let y = try block.forward(BlockInput(activation: input, batch: batch), kernels: kernels)
      if let lossBlock { return try lossBlock.loss(targets: batch.targets, kernels: kernels, keepGradient: false).loss }
      var sum = 0.0
      for i in 0..<y.count { sum += Double(y[i]) * Double(r[i]) }
      return sum
    }

    // Analytic gradients.
    for p in block.parameters { p.grad.zero() }
    _ = try block.forward(BlockInput(activation: input, batch: batch), kernels: kernels)
    let dx: Tensor?
    if let lossBlock {
      _ = try lossBlock.loss(targets: batch.targets, kernels: kernels, keepGradient: true)
      dx = try block.backward(nil, kernels: kernels)
    } else {
      dx = try block.backward(r, kernels: kernels)
    }
    let analyticInput = dx.map { $0.array }

    var checked = 0
    func compare(_ what: String, _ analytic: Float, _ poke: (Float) -> Void, _ original: Float) throws {
      let h: Float = 1e-2
      poke(original + h)
      let plus = try f()
      poke(original - h)
      let minus = try f()
      poke(original)
      let numeric = (plus - minus) / (2 * Double(h))
      let tolerance = 1e-3 + 1e-2 * max(abs(numeric), Double(abs(analytic)))
      XCTAssertEqual(Double(analytic), numeric, accuracy: tolerance, "\(block.name) \(what)")
      checked += 1
    }

    for p in block.parameters {
      let grad = p.grad.array
      for i in sampleIndices(p.count, rng: &rng) {
        let original = p.value[i]
        try compare("\(p.name)[\(i)]", grad[i], { p.value[i] = $0 }, original)
      }
    }
    if let input, let analyticInput {
      for i in sampleIndices(input.count, rng: &rng) {
        let original = input[i]
        try compare("input[\(i)]", analyticInput[i], { input[i] = $0 }, original)
      }
    } else {
      XCTAssertNil(inputShape, "a block with an input activation must return its gradient")
    }
    XCTAssertGreaterThan(checked, 10)
  }

  private func sampleIndices(_ count: Int, rng: inout SplitMix64) -> [Int] {
    if count <= 24 { return Array(0..<count) }
    return (0..<24).map { _ in rng.nextInt(below: count) }
  }

  /// Non-trivial LayerNorm gains and biases, so that their gradients are exercised.
  private func perturbNorms(_ block: Block, seed: UInt64) {
    var rng = SplitMix64(seed: seed)
    for p in block.parameters where p.name.contains("ln_") {
      for i in 0..<p.count { p.value[i] = 1 + Float(rng.nextNormal()) * 0.3 }
    }
  }

  /// GPT's 0.02 init gives near-zero attention scores; larger weights make every path matter.
  private func scaleUp(_ block: Block) {
    for p in block.parameters where p.name.hasSuffix("weight") && p.shape.count == 2 {
      for i in 0..<p.count { p.value[i] *= 15 }
    }
    for p in block.parameters where p.name.hasSuffix("bias") {
      for i in 0..<p.count { p.value[i] = Float(i % 5) * 0.1 - 0.2 }
    }
  }

  private func tokenBatch(rows: Int, shape: GPTShape, seed: UInt64) -> Batch {
    var rng = SplitMix64(seed: seed)
    let n = rows * shape.context
    let tokens = (0..<n).map { _ in Int32(rng.nextInt(below: shape.vocab)) }
    let targets = (0..<n).map { _ in Int32(rng.nextInt(below: shape.vocab)) }
    return Batch(rows: rows, tokens: tokens, features: [], targets: targets)
  }
}
