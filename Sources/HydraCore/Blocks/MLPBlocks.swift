/// One `nn.Linear` of an `mlp`, followed by ReLU unless it is the classifier head:
/// x (B, in) -> y (B, out) = relu(x W^T + b), W stored (out, in) as PyTorch does.
/// Named by its index in the equivalent `nn.Sequential(Linear, ReLU, Linear, ReLU, ..., Linear)`.
public final class LinearBlock: LossBlock {
  public let name: String
  let dense: Dense
  let relu: Bool
  let isFirst: Bool
  public let weight: Parameter
  public let bias: Parameter
  private var input: Tensor?
  private var features = Buffer(), pre = Buffer(), out = Buffer()
  private var dPre = Buffer(), dx = Buffer(), dLogits = Buffer()
  private var rows = 0

  init(sequentialIndex: Int, inputs: Int, outputs: Int, relu: Bool, isFirst: Bool, memory: DeviceMemory?) throws {
    name = "\(sequentialIndex)"
    dense = Dense(inputs: inputs, outputs: outputs, weightIsOutByIn: true)
    self.relu = relu
    self.isFirst = isFirst
    weight = try Parameter(name: "\(sequentialIndex).weight", shape: [outputs, inputs], memory: memory, decays: true)
    bias = try Parameter(name: "\(sequentialIndex).bias", shape: [outputs], memory: memory, decays: false)
  }

  public func releaseBuffers() {
    features.release()
    pre.release()
    out.release()
    dPre.release()
    dx.release()
    dLogits.release()
    input = nil
  }

  public var parameters: [Parameter] { [weight, bias] }

  public var costs: BlockCosts {
    Self.costs(inputs: dense.inputs, outputs: dense.outputs, relu: relu, isFirst: isFirst)
  }

  static func costs(inputs: Int, outputs: Int, relu: Bool, isFirst: Bool) -> BlockCosts {
    // Kept: the features (first block), pre-activation, output (with ReLU); the last block's
    // loss gradient counts as kept too.
    let kept = (isFirst ? inputs : 0) + (relu ? 2 : 2) * outputs
    return BlockCosts(
      parameterBytes: (inputs * outputs + outputs) * floatBytes,
      activationBytesPerSample: kept * floatBytes,
      workspaceBytesPerSample: (inputs + outputs) * floatBytes,
      forwardFlopsPerSample: 2 * inputs * outputs)
  }

  public func forward(_ inputs: BlockInput, kernels: Kernels) throws -> Tensor {
    let x: Tensor
    if isFirst {
      let B = inputs.batch.rows
      precondition(
        inputs.batch.features.count == B * dense.inputs, "\(name): expected \(dense.inputs) features per row")
      x = try features.get([B, dense.inputs], kernels: kernels)
      inputs.batch.features.withUnsafeBufferPointer { kernels.copy($0.baseAddress!, x.data, count: $0.count) }
    } else {
      guard let a = inputs.activation else { preconditionFailure("\(name) needs an input activation") }
      x = a
    }
    let B = x.count / dense.inputs
    rows = B
    input = x
    let z = try pre.get([B, dense.outputs], kernels: kernels)
    dense.forward(x: x.data, rows: B, weight: weight, bias: bias, y: z.data, kernels: kernels)
    guard relu else { return z }
    let y = try out.get([B, dense.outputs], kernels: kernels)
    kernels.reluForward(z.data, y.data, count: B * dense.outputs)
    return y
  }

  public func loss(targets: [Int32], kernels: Kernels, keepGradient: Bool) throws -> (
    loss: Double, correct: Int, count: Int
  ) {
    guard let logits = pre.tensor else { preconditionFailure("\(name): loss before forward") }
    let B = rows
    precondition(targets.count == B, "\(name): expected \(B) targets")
    let d = keepGradient ? try dLogits.get([B, dense.outputs], kernels: kernels) : nil
    let (sum, correct) = targets.withUnsafeBufferPointer { t in
      kernels.softmaxCrossEntropy(
        logits: logits.data, targets: t.baseAddress!, rows: B, classes: dense.outputs,
        dlogits: d?.data, gradScale: 1 / Float(B))
    }
    return (sum / Double(B), correct, B)
  }

  public func backward(_ dOutput: Tensor?, kernels: Kernels) throws -> Tensor? {
    guard let x = input, let z = pre.tensor else { preconditionFailure("\(name): backward before forward") }
    let B = rows
    let dz: Tensor
    if let dy = dOutput {
      if relu {
        dz = try dPre.get([B, dense.outputs], kernels: kernels)
        kernels.reluBackward(z.data, dy.data, dz.data, count: B * dense.outputs)
      } else {
        dz = dy
      }
    } else {
      guard let d = dLogits.tensor else { preconditionFailure("\(name): backward before loss") }
      dz = d
    }
    let dX = isFirst ? nil : try dx.get([B, dense.inputs], kernels: kernels)
    dense.backward(x: x.data, dy: dz.data, rows: B, weight: weight, bias: bias, dx: dX?.data, kernels: kernels)
    return dX
  }
}
