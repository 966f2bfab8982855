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
  public var workspace = Workspace()
  private let dxRole: String
  private var rows = 0
  /// Whether `pre` (the logits of the classifier) holds the loss gradient now.
  private var hasGradient = false

  /// `sequentialIndex` is twice the block's index in the model (Linear, ReLU, Linear, ...).
  init(sequentialIndex: Int, inputs: Int, outputs: Int, relu: Bool, isFirst: Bool, memory: DeviceMemory?) throws {
    name = "\(sequentialIndex)"
    dxRole = "dx\((sequentialIndex / 2) % 2)"
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
    workspace.release()
    input = nil
  }

  public var keptTensors: [Tensor] { [features, pre, out].compactMap(\.tensor) }

  public var parameters: [Parameter] { [weight, bias] }

  public var costs: BlockCosts {
    Self.costs(inputs: dense.inputs, outputs: dense.outputs, relu: relu, isFirst: isFirst)
  }

  static func costs(inputs: Int, outputs: Int, relu: Bool, isFirst: Bool) -> BlockCosts {
    // Kept: the features (first block), the pre-activation (the classifier's logits, then its loss
    // gradient), the output (with ReLU).
    let kept = (isFirst ? inputs : 0) + (relu ? 2 : 1) * outputs
    var workspace: [String: Int] = [:]
    if relu { workspace["pre"] = outputs * floatBytes }
    if !isFirst { workspace["dx"] = inputs * floatBytes }
    return BlockCosts(
      parameterBytes: (inputs * outputs + outputs) * floatBytes,
      activationBytesPerSample: kept * floatBytes, workspace: workspace,
      forwardFlopsPerSample: 2 * inputs * outputs)
  }

  public func forward(_ inputs: BlockInput, kernels: Kernels) throws -> Tensor {
    let x: Tensor
    if isFirst {
      let B = inputs.batch.rows
      precondition(
        inputs.batch.features.count == B * dense.inputs, "\(name): expected \(dense.inputs) features per row")
      x = try features.get([B, dense.inputs], kernels: kernels)
      // Host -> device, through the plugin.
      inputs.batch.features.withUnsafeBytes { x.write(from: $0.baseAddress!) }
    } else {
      guard let a = inputs.activation else { preconditionFailure("\(name) needs an input activation") }
      x = a
    }
    let B = x.count / dense.inputs
    rows = B
    input = x
    hasGradient = false
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
    guard let logits = pre.tensor, !hasGradient else { preconditionFailure("\(name): loss before forward") }
    let B = rows
    precondition(targets.count == B, "\(name): expected \(B) targets")
    let (sum, correct) = targets.withUnsafeBufferPointer { t in
      kernels.softmaxCrossEntropy(
        logits: logits.data, targets: t.baseAddress!, rows: B, classes: dense.outputs,
        dlogits: keepGradient ? logits.data : nil, gradScale: 1 / Float(B))
    }
    hasGradient = keepGradient
    return (sum / Double(B), correct, B)
  }

  public func backward(_ dOutput: Tensor?, kernels: Kernels) throws -> Tensor? {
    guard let x = input, let z = pre.tensor else { preconditionFailure("\(name): backward before forward") }
    let B = rows
    let dz: Tensor
    if let dy = dOutput {
      if relu {
        dz = try workspace.get("pre", [B, dense.outputs], kernels: kernels)
        kernels.reluBackward(z.data, dy.data, dz.data, count: B * dense.outputs)
      } else {
        dz = dy
      }
    } else {
      guard hasGradient else { preconditionFailure("\(name): backward before loss") }
      dz = z
    }
    let dX = isFirst ? nil : try workspace.get(dxRole, [B, dense.inputs], kernels: kernels)
    dense.backward(x: x.data, dy: dz.data, rows: B, weight: weight, bias: bias, dx: dX?.data, kernels: kernels)
    return dX
  }
}
