import Foundation

/// The architecture of one model, from which its blocks are built.
public enum ModelSpec: Sendable, Equatable {
  /// GPT-2: embedding block, `layers` transformer blocks, head (blocks = layers + 2).
  case gpt(GPTShape)
  /// `nn.Sequential(Linear(inputs, hidden[0]), ReLU, ..., Linear(hidden.last, classes))`:
  /// one block per Linear (blocks = hidden.count + 1).
  case mlp(inputs: Int, hidden: [Int], classes: Int)

  /// True for `mlp`: one prediction per row, reported as accuracy; `gpt` predicts every token.
  public var isClassifier: Bool {
    if case .mlp = self { return true }
    return false
  }

  public var blockCount: Int {
    switch self {
    case .gpt(let s): return s.layers + 2
    case .mlp(_, let hidden, _): return hidden.count + 1
    }
  }

  /// The costs of block `index`, from shapes alone (nothing is allocated).
  public func blockCosts(_ index: Int) -> BlockCosts {
    switch self {
    case .gpt(let s):
      if index == 0 { return EmbeddingBlock.costs(s) }
      if index == s.layers + 1 { return GPTHead.costs(s) }
      return TransformerBlock.costs(s)
    case .mlp(let inputs, let hidden, let classes):
      let widths = [inputs] + hidden + [classes]
      return LinearBlock.costs(
        inputs: widths[index], outputs: widths[index + 1], relu: index < hidden.count, isFirst: index == 0)
    }
  }

  /// The bytes per sample of block `index`'s output (the next block's input).
  public func outputBytesPerSample(_ index: Int) -> Int {
    switch self {
    case .gpt(let s):
      return (index == s.layers + 1 ? s.vocab : s.channels) * s.context * floatBytes
    case .mlp(let inputs, let hidden, let classes):
      return ([inputs] + hidden + [classes])[index + 1] * floatBytes
    }
  }

  public func blockName(_ index: Int) -> String {
    switch self {
    case .gpt(let s):
      return index == 0 ? "embedding" : index == s.layers + 1 ? "head" : "h.\(index - 1)"
    case .mlp: return "\(2 * index)"
    }
  }

  /// Builds block `index`, its parameters charged to `memory` and zero until `initialize`.
  public func makeBlock(_ index: Int, memory: DeviceMemory?) throws -> Block {
    switch self {
    case .gpt(let s):
      if index == 0 { return try EmbeddingBlock(shape: s, memory: memory) }
      if index == s.layers + 1 { return try GPTHead(shape: s, memory: memory) }
      return try TransformerBlock(index: index - 1, shape: s, memory: memory)
    case .mlp(let inputs, let hidden, let classes):
      let widths = [inputs] + hidden + [classes]
      return try LinearBlock(
        sequentialIndex: 2 * index, inputs: widths[index], outputs: widths[index + 1],
        relu: index < hidden.count, isFirst: index == 0, memory: memory)
    }
  }

  /// Sets a block's parameters to their initial values. Each parameter draws from its own
  /// generator, seeded by the model seed and the parameter's name, so a block initialises the same
  /// wherever it is built and whatever else is built beside it.
  ///
  /// gpt (GPT-2): weights ~ N(0, 0.02), the two residual projections (`c_proj`) ~ N(0, 0.02 / sqrt(2
  /// layers)), biases 0, LayerNorm gains 1. mlp (PyTorch `nn.Linear`): weight and bias
  /// ~ U(-1/sqrt(in), 1/sqrt(in)).
  ///
  /// A large parameter is drawn in pieces on every core at once: piece `[lo, hi)` starts from the
  /// parameter's generator advanced past the draws of values `0..<lo` (a normal takes two, a
  /// uniform one), so the values are those of one sequential stream.
  public func initialize(_ block: Block, seed: UInt64) {
    for p in block.parameters where p.replicaOf == nil {
      let rng = SplitMix64(seed: derivedSeed(seed, stableHash(p.name)))
      // Drawn in host memory: in place when the tensor is in host RAM, else into a copy written
      // to the tensor through its device's plugin (a block built on a device).
      func fill(_ values: UnsafeMutableBufferPointer<Float>) {
        switch self {
        case .gpt(let s):
          let name = p.name
          if name.hasSuffix("ln_1.weight") || name.hasSuffix("ln_2.weight") || name == "ln_f.weight" {
            for i in values.indices { values[i] = 1 }
          } else if name.hasSuffix(".bias") {
            for i in values.indices { values[i] = 0 }
          } else {
            let std = name.hasSuffix("c_proj.weight") ? 0.02 / (2 * Double(s.layers)).squareRoot() : 0.02
            ModelSpec.draw(values, from: rng, drawsPerValue: 2) { $0.fillNormals($1, scale: std) }
          }
        case .mlp:
          let fanIn = block.parameters[0].shape[1]
          let bound = 1 / Double(fanIn).squareRoot()
          ModelSpec.draw(values, from: rng, drawsPerValue: 1) { r, piece in
            for i in piece.indices { piece[i] = Float((r.nextUnit() * 2 - 1) * bound) }
          }
        }
      }
      if p.value.deviceBuffers == nil {
        fill(p.value.buffer)
      } else {
        var drawn = [Float](repeating: 0, count: p.count)
        drawn.withUnsafeMutableBufferPointer { fill($0) }
        drawn.withUnsafeBytes { p.value.write(from: $0.baseAddress!) }
      }
    }
  }

  /// Values drawn per piece of `draw` (a piece is worth a thread above this).
  static let drawPiece = 1 << 16

  /// `values` drawn in order from `rng`, each value taking `drawsPerValue` calls of `next()`:
  /// `fill(&generator, piece)` draws a piece's values in order, from the generator advanced past
  /// the pieces before it; in pieces on every core when there are several.
  static func draw(
    _ values: UnsafeMutableBufferPointer<Float>, from rng: SplitMix64, drawsPerValue: UInt64,
    _ fill: (inout SplitMix64, UnsafeMutableBufferPointer<Float>) -> Void
  ) {
    let pieces = (values.count + drawPiece - 1) / drawPiece
    func fillPiece(_ piece: Int) {
      let lo = piece * drawPiece, hi = Swift.min(values.count, lo + drawPiece)
      var r = rng.advanced(by: UInt64(lo) &* drawsPerValue)
      fill(&r, UnsafeMutableBufferPointer(rebasing: values[lo..<hi]))
    }
    if pieces == 1 { return fillPiece(0) }
    DispatchQueue.concurrentPerform(iterations: pieces) { fillPiece($0) }
  }
}

/// The model FLOPs of one training step, as the benchmarks define them:
/// 6 x parameters x tokens (+ 12 x layers x batch x context^2 x d_model for `gpt` attention).
public func modelFlopsPerStep(_ spec: ModelSpec, batch: Int) -> Double {
  switch spec {
  case .gpt(let s):
    let C = Double(s.channels), T = Double(s.context), L = Double(s.layers)
    let params = Double(s.vocab) * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    let tokens = Double(batch) * T
    return 6 * params * tokens + 12 * L * Double(batch) * T * T * C
  case .mlp(let inputs, let hidden, let classes):
    let widths = ([inputs] + hidden + [classes]).map(Double.init)
    var params = 0.0
    for i in 0..<(widths.count - 1) { params += widths[i] * widths[i + 1] + widths[i + 1] }
    return 6 * params * Double(batch)
  }
}
