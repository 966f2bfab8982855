import Foundation

/// Sizes shared by the blocks of one `gpt` model.
public struct GPTShape: Sendable, Equatable {
  public var layers: Int
  public var channels: Int  // d_model, C
  public var heads: Int
  public var context: Int  // T
  public var vocab: Int  // V
  public init(layers: Int, channels: Int, heads: Int, context: Int, vocab: Int) {
    self.layers = layers
    self.channels = channels
    self.heads = heads
    self.context = context
    self.vocab = vocab
  }
}

let layerNormEps: Float = 1e-5

/// Token + position embedding: tokens (B, T) -> x (B, T, C) = wte[token] + wpe[position].
/// Owns `wte`, which the head reuses as its output projection (tied weights).
public final class EmbeddingBlock: Block {
  public let name = "embedding"
  let shape: GPTShape
  public let wte: Parameter  // (V, C)
  public let wpe: Parameter  // (T, C)
  private var out = Buffer()
  private var tokens: [Int32] = []
  private var batchRows = 0
  public var workspace = Workspace()

  init(shape: GPTShape, memory: DeviceMemory?) throws {
    self.shape = shape
    wte = try Parameter(name: "wte.weight", shape: [shape.vocab, shape.channels], memory: memory, decays: true)
    wpe = try Parameter(name: "wpe.weight", shape: [shape.context, shape.channels], memory: memory, decays: true)
  }

  public func releaseBuffers() {
    out.release()
  }

  public var keptTensors: [Tensor] { [out.tensor].compactMap { $0 } }

  public var parameters: [Parameter] { [wte, wpe] }

  public var costs: BlockCosts { Self.costs(shape) }

  static func costs(_ shape: GPTShape) -> BlockCosts {
    BlockCosts(
      parameterBytes: (shape.vocab + shape.context) * shape.channels * floatBytes,
      activationBytesPerSample: shape.context * shape.channels * floatBytes,
      forwardFlopsPerSample: shape.context * shape.channels)
  }

  public func forward(_ input: BlockInput, kernels: Kernels) throws -> Tensor {
    let B = input.batch.rows, T = shape.context, C = shape.channels
    precondition(input.batch.tokens.count == B * T, "embedding: expected \(B * T) tokens")
    let y = try out.get([B, T, C], kernels: kernels)
    tokens = input.batch.tokens
    batchRows = B
    tokens.withUnsafeBufferPointer { tok in
      kernels.embeddingForward(
        tokens: tok.baseAddress!, wte: wte.value.data, wpe: wpe.value.data, out: y.data,
        batch: B, seq: T, channels: C)
    }
    return y
  }

  public func backward(_ dOutput: Tensor?, kernels: Kernels) throws -> Tensor? {
    guard let dy = dOutput else { preconditionFailure("embedding is never the last block") }
    tokens.withUnsafeBufferPointer { tok in
      kernels.embeddingBackward(
        dout: dy.data, tokens: tok.baseAddress!, dwte: wte.grad.data, dwpe: wpe.grad.data,
        batch: batchRows, seq: shape.context, channels: shape.channels)
    }
    return nil
  }
}

/// One pre-LayerNorm GPT-2 block on x (B, T, C):
///   x2 = x + proj(attention(ln_1(x)));  y = x2 + mlp.c_proj(gelu(mlp.c_fc(ln_2(x2)))).
///
/// Kept for the backward, per token: ln1 (C), qkv (3C), att (C), x2 (C), ln2 (C), fc (4C), y (C),
/// four LayerNorm statistics, and the attention probabilities (heads x T): 12 C + 4 + heads T
/// floats. GELU's output is not kept: the backward recomputes it from fc into scratch.
public final class TransformerBlock: Block {
  public let name: String
  let shape: GPTShape
  let ln1w, ln1b, attnW, attnB, projW, projB, ln2w, ln2b, fcW, fcB, fcProjW, fcProjB: Parameter
  private let qkvDense, projDense, fcDense, fcProjDense: Dense

  // Saved by the forward for the backward (shapes for B rows of T tokens).
  private var input: Tensor?  // x (B,T,C), owned by the previous block
  private var ln1 = Buffer(), ln1Mean = Buffer(), ln1Rstd = Buffer()  // (B,T,C), (B,T), (B,T)
  private var qkv = Buffer(), probs = Buffer(), att = Buffer()  // (B,T,3C), (B,H,T,T), (B,T,C)
  private var x2 = Buffer(), ln2 = Buffer(), ln2Mean = Buffer(), ln2Rstd = Buffer()
  private var fc = Buffer(), out = Buffer()  // (B,T,4C), (B,T,C)
  /// Backward scratch, shared with the shard's other blocks.
  public var workspace = Workspace()
  /// "dx0" or "dx1": the buffer this block's input gradient goes to (by its index in the model).
  private let dxRole: String
  private var rows = 0

  /// `index` is the layer (block `index + 1` of the model).
  init(index: Int, shape: GPTShape, memory: DeviceMemory?) throws {
    let C = shape.channels
    name = "h.\(index)"
    self.shape = shape
    dxRole = "dx\((index + 1) % 2)"
    func p(_ suffix: String, _ dims: [Int], decays: Bool) throws -> Parameter {
      try Parameter(name: "h.\(index).\(suffix)", shape: dims, memory: memory, decays: decays)
    }
    ln1w = try p("ln_1.weight", [C], decays: false)
    ln1b = try p("ln_1.bias", [C], decays: false)
    attnW = try p("attn.c_attn.weight", [C, 3 * C], decays: true)
    attnB = try p("attn.c_attn.bias", [3 * C], decays: false)
    projW = try p("attn.c_proj.weight", [C, C], decays: true)
    projB = try p("attn.c_proj.bias", [C], decays: false)
    ln2w = try p("ln_2.weight", [C], decays: false)
    ln2b = try p("ln_2.bias", [C], decays: false)
    fcW = try p("mlp.c_fc.weight", [C, 4 * C], decays: true)
    fcB = try p("mlp.c_fc.bias", [4 * C], decays: false)
    fcProjW = try p("mlp.c_proj.weight", [4 * C, C], decays: true)
    fcProjB = try p("mlp.c_proj.bias", [C], decays: false)
    qkvDense = Dense(inputs: C, outputs: 3 * C, weightIsOutByIn: false)
    projDense = Dense(inputs: C, outputs: C, weightIsOutByIn: false)
    fcDense = Dense(inputs: C, outputs: 4 * C, weightIsOutByIn: false)
    fcProjDense = Dense(inputs: 4 * C, outputs: C, weightIsOutByIn: false)
  }

  private var keptBuffers: [Buffer] { [ln1, ln1Mean, ln1Rstd, qkv, probs, att, x2, ln2, ln2Mean, ln2Rstd, fc, out] }

  public var keptTensors: [Tensor] { keptBuffers.compactMap(\.tensor) }

  public func releaseBuffers() {
    for b in [
      \TransformerBlock.ln1, \.ln1Mean, \.ln1Rstd, \.qkv, \.probs, \.att, \.x2, \.ln2, \.ln2Mean, \.ln2Rstd, \.fc,
      \.out,
    ] {
      self[keyPath: b].release()
    }
    workspace.release()
    input = nil
  }

  public var parameters: [Parameter] {
    [ln1w, ln1b, attnW, attnB, projW, projB, ln2w, ln2b, fcW, fcB, fcProjW, fcProjB]
  }

  public var costs: BlockCosts { Self.costs(shape) }

  static func costs(_ shape: GPTShape) -> BlockCosts {
    let T = shape.context, C = shape.channels, H = shape.heads
    let params = 12 * C * C + 13 * C
    let kept = T * 12 * C + H * T * T + 4 * T
    let matmuls = T * 2 * (3 * C * C + C * C + 4 * C * C + 4 * C * C)
    let attention = 2 * 2 * T * T * C
    let f = floatBytes
    return BlockCosts(
      parameterBytes: params * f, activationBytesPerSample: kept * f,
      forwardWorkspace: ["wide0": T * 4 * C * f],
      workspace: [
        "wide0": T * 4 * C * f, "wide1": T * 4 * C * f, "narrow": T * C * f, "residual": T * C * f,
        "qkv": T * 3 * C * f, "probs": H * T * T * f, "dx": T * C * f,
      ],
      forwardFlopsPerSample: matmuls + attention)
  }

  public func forward(_ inputs: BlockInput, kernels: Kernels) throws -> Tensor {
    guard let x = inputs.activation else { preconditionFailure("\(name) needs an input activation") }
    let T = shape.context, C = shape.channels, H = shape.heads
    let B = x.count / (T * C)
    let N = B * T
    rows = N
    input = x
    let ln1 = try ln1.get([B, T, C], kernels: kernels)
    let m1 = try ln1Mean.get([N], kernels: kernels), r1 = try ln1Rstd.get([N], kernels: kernels)
    kernels.layerNormForward(
      x.data, gamma: ln1w.value.data, beta: ln1b.value.data, ln1.data, mean: m1.data, rstd: r1.data,
      rows: N, cols: C, eps: layerNormEps)
    let qkv = try qkv.get([B, T, 3 * C], kernels: kernels)
    qkvDense.forward(x: ln1.data, rows: N, weight: attnW, bias: attnB, y: qkv.data, kernels: kernels)
    let probs = try probs.get([B, H, T, T], kernels: kernels)
    let att = try att.get([B, T, C], kernels: kernels)
    kernels.attentionForward(
      qkv: qkv.data, out: att.data, probs: probs.data, batch: B, seq: T, channels: C, heads: H)
    let x2 = try x2.get([B, T, C], kernels: kernels)
    projDense.forward(
      x: att.data, rows: N, weight: projW, bias: projB, residual: x.data, y: x2.data, kernels: kernels)
    let ln2 = try ln2.get([B, T, C], kernels: kernels)
    let m2 = try ln2Mean.get([N], kernels: kernels), r2 = try ln2Rstd.get([N], kernels: kernels)
    kernels.layerNormForward(
      x2.data, gamma: ln2w.value.data, beta: ln2b.value.data, ln2.data, mean: m2.data, rstd: r2.data,
      rows: N, cols: C, eps: layerNormEps)
    let fc = try fc.get([B, T, 4 * C], kernels: kernels)
    fcDense.forward(x: ln2.data, rows: N, weight: fcW, bias: fcB, y: fc.data, kernels: kernels)
    // GELU's output is read by the next product only, so it goes to scratch; the backward makes it
    // again.
    let gelu = try workspace.get("wide0", [B, T, 4 * C], kernels: kernels)
    kernels.geluForward(fc.data, gelu.data, count: N * 4 * C)
    let y = try out.get([B, T, C], kernels: kernels)
    fcProjDense.forward(
      x: gelu.data, rows: N, weight: fcProjW, bias: fcProjB, residual: x2.data, y: y.data, kernels: kernels)
    return y
  }
  public func backward(_ dOutput: Tensor?, kernels: Kernels) throws -> Tensor? {
    guard let dy = dOutput, let x = input,
      let ln1 = ln1.tensor, let m1 = ln1Mean.tensor, let r1 = ln1Rstd.tensor, let qkv = qkv.tensor,
      let probs = probs.tensor, let att = att.tensor, let x2 = x2.tensor, let ln2 = ln2.tensor,
      let m2 = ln2Mean.tensor, let r2 = ln2Rstd.tensor, let fc = fc.tensor
    else { preconditionFailure("\(name): backward before forward") }
    let T = shape.context, C = shape.channels, H = shape.heads
    let N = rows, B = N / T
    // MLP: y = x2 + c_proj(gelu(c_fc(ln_2(x2)))). c_proj's input gradient first (it needs no GELU
    // output); then one pass makes GELU's output again, into wide0, for c_proj's weight gradient,
    // and turns dGelu into dFc in place in wide1.
    let dGelu = try workspace.get("wide1", [B, T, 4 * C], kernels: kernels)
    fcProjDense.inputGradient(dy: dy.data, rows: N, weight: fcProjW, dx: dGelu.data, kernels: kernels)
    let gelu = try workspace.get("wide0", [B, T, 4 * C], kernels: kernels)
    kernels.geluForwardBackward(fc.data, dGelu.data, y: gelu.data, dx: dGelu.data, count: N * 4 * C)
    fcProjDense.parameterGradients(
      x: gelu.data, dy: dy.data, rows: N, weight: fcProjW, bias: fcProjB, kernels: kernels)
    let dFc = dGelu
    let dLn2 = try workspace.get("narrow", [B, T, C], kernels: kernels)
    fcDense.backward(x: ln2.data, dy: dFc.data, rows: N, weight: fcW, bias: fcB, dx: dLn2.data, kernels: kernels)
    let dX2 = try workspace.get("residual", [B, T, C], kernels: kernels)
    kernels.copy(dy.data, dX2.data, count: N * C)
    kernels.layerNormBackward(
      dLn2.data, x2.data, gamma: ln2w.value.data, mean: m2.data, rstd: r2.data, dx: dX2.data,
      dgamma: ln2w.grad.data, dbeta: ln2b.grad.data, rows: N, cols: C)
    // Attention: x2 = x + c_proj(attention(c_attn(ln_1(x)))).
    let dAtt = dLn2
    projDense.backward(x: att.data, dy: dX2.data, rows: N, weight: projW, bias: projB, dx: dAtt.data, kernels: kernels)
    let dQkv = try workspace.get("qkv", [B, T, 3 * C], kernels: kernels)
    let scratch = try workspace.get("probs", [B, H, T, T], kernels: kernels)
    kernels.attentionBackward(
      dout: dAtt.data, qkv: qkv.data, probs: probs.data, dqkv: dQkv.data, scratch: scratch.data,
      batch: B, seq: T, channels: C, heads: H)
    let dLn1 = dLn2
    qkvDense.backward(x: ln1.data, dy: dQkv.data, rows: N, weight: attnW, bias: attnB, dx: dLn1.data, kernels: kernels)
    let dX = try workspace.get(dxRole, [B, T, C], kernels: kernels)
    kernels.copy(dX2.data, dX.data, count: N * C)
    kernels.layerNormBackward(
      dLn1.data, x.data, gamma: ln1w.value.data, mean: m1.data, rstd: r1.data, dx: dX.data,
      dgamma: ln1w.grad.data, dbeta: ln1b.grad.data, rows: N, cols: C)
    return dX
  }
}

/// Final LayerNorm and the output projection, tied to the token embedding:
/// x (B, T, C) -> logits (B, T, V) = ln_f(x) wte^T; the loss is softmax cross-entropy per token.
/// The loss gradient is written over the logits (nothing reads them after the loss).
public final class GPTHead: LossBlock {
  public let name = "head"
  let shape: GPTShape
  let lnfw, lnfb: Parameter
  /// A replica of the embedding's `wte` (see `Parameter.replicaOf`).
  public let wte: Parameter
  private var input: Tensor?
  private var lnf = Buffer(), mean = Buffer(), rstd = Buffer(), logits = Buffer()
  public var workspace = Workspace()
  private let dxRole: String
  private var rows = 0
  /// Whether `logits` holds the loss gradient now.
  private var hasGradient = false

  init(shape: GPTShape, memory: DeviceMemory?) throws {
    self.shape = shape
    dxRole = "dx\((shape.layers + 1) % 2)"
    lnfw = try Parameter(name: "ln_f.weight", shape: [shape.channels], memory: memory, decays: false)
    lnfb = try Parameter(name: "ln_f.bias", shape: [shape.channels], memory: memory, decays: false)
    wte = try Parameter(
      name: "lm_head.weight", shape: [shape.vocab, shape.channels], memory: memory, decays: true,
      replicaOf: "wte.weight")
  }

  public func releaseBuffers() {
    lnf.release()
    mean.release()
    rstd.release()
    logits.release()
    workspace.release()
    input = nil
  }

  public var keptTensors: [Tensor] { [lnf, mean, rstd, logits].compactMap(\.tensor) }

  public var parameters: [Parameter] { [lnfw, lnfb, wte] }

  public var costs: BlockCosts { Self.costs(shape) }

  static func costs(_ shape: GPTShape) -> BlockCosts {
    let T = shape.context, C = shape.channels, V = shape.vocab
    return BlockCosts(
      parameterBytes: 2 * C * floatBytes, replicaBytes: V * C * floatBytes,
      activationBytesPerSample: (T * (C + V) + 2 * T) * floatBytes,
      workspace: ["narrow": T * C * floatBytes, "dx": T * C * floatBytes], forwardFlopsPerSample: 2 * T * C * V)
  }

  public func forward(_ inputs: BlockInput, kernels: Kernels) throws -> Tensor {
    guard let x = inputs.activation else { preconditionFailure("head needs an input activation") }
    let T = shape.context, C = shape.channels, V = shape.vocab
    let B = x.count / (T * C), N = B * T
    rows = N
    input = x
    hasGradient = false
    let lnf = try lnf.get([B, T, C], kernels: kernels)
    let mean = try mean.get([N], kernels: kernels), rstd = try rstd.get([N], kernels: kernels)
    kernels.layerNormForward(
      x.data, gamma: lnfw.value.data, beta: lnfb.value.data, lnf.data, mean: mean.data,
      rstd: rstd.data, rows: N, cols: C, eps: layerNormEps)
    let logits = try logits.get([B, T, V], kernels: kernels)
    kernels.gemm(
      transA: false, transB: true, m: N, n: V, k: C, alpha: 1, a: lnf.data, lda: C,
      b: wte.value.data, ldb: C, beta: 0, c: logits.data, ldc: V)
    return logits
  }

  public func loss(targets: [Int32], kernels: Kernels, keepGradient: Bool) throws -> (
    loss: Double, correct: Int, count: Int
  ) {
    guard let logits = logits.tensor, !hasGradient else { preconditionFailure("head: loss before forward") }
    let N = rows, V = shape.vocab
    precondition(targets.count == N, "head: expected \(N) targets")
    let (sum, correct) = targets.withUnsafeBufferPointer { t in
      kernels.softmaxCrossEntropy(
        logits: logits.data, targets: t.baseAddress!, rows: N, classes: V,
        dlogits: keepGradient ? logits.data : nil, gradScale: 1 / Float(N))
    }
    hasGradient = keepGradient
    return (sum / Double(N), correct, N)
  }

  public func backward(_ dOutput: Tensor?, kernels: Kernels) throws -> Tensor? {
    guard let x = input, let lnf = lnf.tensor, let mean = mean.tensor, let rstd = rstd.tensor,
      let dl = logits.tensor, hasGradient
    else { preconditionFailure("head: backward before loss") }
    let T = shape.context, C = shape.channels, V = shape.vocab
    let N = rows, B = N / T
    // dwte(V, C) += dlogits^T lnf; dlnf = dlogits wte.
    kernels.gemm(
      transA: true, transB: false, m: V, n: C, k: N, alpha: 1, a: dl.data, lda: V, b: lnf.data,
      ldb: C, beta: 1, c: wte.grad.data, ldc: C)
    let dLnf = try workspace.get("narrow", [B, T, C], kernels: kernels)
    kernels.gemm(
      transA: false, transB: false, m: N, n: C, k: V, alpha: 1, a: dl.data, lda: V,
      b: wte.value.data, ldb: C, beta: 0, c: dLnf.data, ldc: C)
    let dX = try workspace.get(dxRole, [B, T, C], kernels: kernels)
    kernels.fill(dX.data, value: 0, count: N * C)
    kernels.layerNormBackward(
      dLnf.data, x.data, gamma: lnfw.value.data, mean: mean.data, rstd: rstd.data, dx: dX.data,
      dgamma: lnfw.grad.data, dbeta: lnfb.grad.data, rows: N, cols: C)
    return dX
  }
}
