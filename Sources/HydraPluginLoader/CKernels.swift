import CHydraPlugin
import Foundation
import HydraRuntime

/// The memory of one device of a kernels plugin library: the plugin's `allocate`, `deallocate` and
/// copies, counted here. It owns the plugin's instance (freed with `destroy` when the last tensor
/// and kernels object holding it are gone), so it outlives every buffer it handed out.
final class CDeviceBuffers: DeviceBuffers, @unchecked Sendable {
  let table: hydra_kernels
  let instance: UnsafeMutableRawPointer?
  let name: String
  let file: String
  private let owned: Bool
  private let counter = DeviceTrafficCounter()

  init(_ table: hydra_kernels, instance: UnsafeMutableRawPointer?, owned: Bool, name: String, file: String) {
    self.table = table
    self.instance = instance
    self.owned = owned
    self.name = name
    self.file = file
  }

  deinit {
    if owned { table.destroy?(instance) }
  }

  func allocate(byteCount: Int, zeroed: Bool) -> UnsafeMutableRawPointer {
    guard let p = table.allocate!(instance, Int64(max(byteCount, 1)), zeroed ? 1 : 0) else {
      // `DeviceBuffers.allocate` cannot fail: the runtime's budget is checked before it is called,
      // so a refusal is the plugin's failure. End the job (exit 1) with a message, not a trap.
      let error = PluginError(
        file: file, kind: "kernels", name: name,
        "allocate of \(formatBytes(byteCount)) failed (the plugin returned NULL)")
      FileHandle.standardError.write(Data("hydra-mpi: \(error)\n".utf8))
      exit(1)
    }
    return p
  }

  func deallocate(_ buffer: UnsafeMutableRawPointer, byteCount: Int) {
    table.deallocate!(instance, buffer, Int64(max(byteCount, 1)))
  }

  func copy(fromHost source: UnsafeRawPointer, toDevice destination: UnsafeMutableRawPointer, byteCount: Int) {
    table.copy_to_device!(instance, destination, source, Int64(byteCount))
    counter.record(.hostToDevice, byteCount: byteCount)
  }

  func copy(fromDevice source: UnsafeRawPointer, toHost destination: UnsafeMutableRawPointer, byteCount: Int) {
    table.copy_to_host!(instance, destination, source, Int64(byteCount))
    counter.record(.deviceToHost, byteCount: byteCount)
  }

  func copy(onDevice source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, byteCount: Int) {
    table.copy_on_device!(instance, destination, source, Int64(byteCount))
    counter.record(.deviceToDevice, byteCount: byteCount)
  }

  func synchronize() { table.synchronize!(instance) }

  var traffic: DeviceTraffic { counter.traffic }
}

/// A kernels table of a plugin library as `Kernels`: one instance per device, made by the
/// plugin's `create`. Unless the plugin computes on host memory, the device's `memory` is placed in
/// the plugin's buffers (`CDeviceBuffers`) before anything is allocated, so every tensor of the
/// device is the plugin's and crosses to the host only through its copies. Every function the
/// loader admitted is non-NULL (`KernelsTableCheck`), hence the `!`.
final class CKernels: Kernels {
  let name: String
  let threads: Int
  let memory: DeviceMemory
  private let table: hydra_kernels
  private let instance: UnsafeMutableRawPointer?
  /// Owns the instance (also without device memory of its own).
  private let device: CDeviceBuffers

  init(_ table: hydra_kernels, name: String, file: String, threads: Int, memory: DeviceMemory) throws {
    var instance = table.context
    if let create = table.create {
      var error = hydra_error()
      var made: UnsafeMutableRawPointer?
      let code = memory.label.withCString { create(table.context, Int64(threads), $0, &made, &error) }
      if code == HYDRA_ERROR_INPUT {
        throw InputError(file: file, "kernels \"\(name)\" refuses this job: \(pluginMessage(error))")
      }
      guard code == HYDRA_OK else {
        throw PluginError(
          file: file, kind: "kernels", name: name, "create failed (code \(code)): \(pluginMessage(error))")
      }
      instance = made
    }
    self.table = table
    self.name = name
    self.threads = threads
    self.memory = memory
    self.instance = instance
    device = CDeviceBuffers(table, instance: instance, owned: table.create != nil, name: name, file: file)
    if table.flags & UInt32(HYDRA_KERNELS_HOST_MEMORY) == 0 { memory.place(in: device) }
  }

  func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    table.gemm!(
      instance, transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta,
      c, Int64(ldc))
  }

  func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
    strideC: Int, batch: Int
  ) {
    table.gemm_batched!(
      instance, transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), Int64(strideA), b,
      Int64(ldb), Int64(strideB), beta, c, Int64(ldc), Int64(strideC), Int64(batch))
  }

  func addBias(_ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, cols: Int) {
    table.add_bias!(instance, y, bias, Int64(rows), Int64(cols))
  }

  func accumulateBiasGradient(
    _ dy: UnsafePointer<Float>, rows: Int, cols: Int, into dbias: UnsafeMutablePointer<Float>
  ) {
    table.accumulate_bias_gradient!(instance, dy, Int64(rows), Int64(cols), dbias)
  }

  func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    table.gelu_forward!(instance, x, y, Int64(count))
  }

  func geluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    table.gelu_backward!(instance, x, dy, dx, Int64(count))
  }

  func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    table.relu_forward!(instance, x, y, Int64(count))
  }

  func reluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    table.relu_backward!(instance, x, dy, dx, Int64(count))
  }

  func layerNormForward(
    _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
    _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, rows: Int,
    cols: Int, eps: Float
  ) {
    table.layer_norm_forward!(instance, x, gamma, beta, y, mean, rstd, Int64(rows), Int64(cols), eps)
  }

  func layerNormBackward(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, mean: UnsafePointer<Float>,
    rstd: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>,
    dbeta: UnsafeMutablePointer<Float>, rows: Int, cols: Int
  ) {
    table.layer_norm_backward!(instance, dy, x, gamma, mean, rstd, dx, dgamma, dbeta, Int64(rows), Int64(cols))
  }

  func attentionForward(
    qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>, batch: Int,
    seq: Int, channels: Int, heads: Int
  ) {
    table.attention_forward!(instance, qkv, out, probs, Int64(batch), Int64(seq), Int64(channels), Int64(heads))
  }

  func attentionBackward(
    dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int,
    heads: Int
  ) {
    table.attention_backward!(
      instance, dout, qkv, probs, dqkv, scratch, Int64(batch), Int64(seq), Int64(channels), Int64(heads))
  }

  func embeddingForward(
    tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    table.embedding_forward!(instance, tokens, wte, wpe, out, Int64(batch), Int64(seq), Int64(channels))
  }

  func embeddingBackward(
    dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>, dwte: UnsafeMutablePointer<Float>,
    dwpe: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    table.embedding_backward!(instance, dout, tokens, dwte, dwpe, Int64(batch), Int64(seq), Int64(channels))
  }

  func softmaxCrossEntropy(
    logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, classes: Int,
    dlogits: UnsafeMutablePointer<Float>?, gradScale: Float
  ) -> (loss: Double, correct: Int) {
    var loss = 0.0
    var correct: Int64 = 0
    table.softmax_cross_entropy!(
      instance, logits, targets, Int64(rows), Int64(classes), dlogits, gradScale, &loss, &correct)
    return (loss, Int(correct))
  }

  func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
    table.add!(instance, a, b, out, Int64(count))
  }

  func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    table.accumulate!(instance, x, y, Int64(count))
  }

  func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    table.copy!(instance, src, dst, Int64(count))
  }

  func fill(_ x: UnsafeMutablePointer<Float>, value: Float, count: Int) {
    table.fill!(instance, x, value, Int64(count))
  }

  func scale(_ x: UnsafeMutablePointer<Float>, by factor: Float, count: Int) {
    table.scale!(instance, x, factor, Int64(count))
  }

  func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
    var result = 0.0
    table.sum_of_squares!(instance, x, Int64(count), &result)
    return result
  }

  func sgdStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, momentumBuffer: UnsafeMutablePointer<Float>,
    count: Int, lr: Float, momentum: Float, weightDecay: Float, step: Int
  ) {
    table.sgd_step!(instance, param, grad, momentumBuffer, Int64(count), lr, momentum, weightDecay, Int64(step))
  }

  func adamwStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
    v: UnsafeMutablePointer<Float>, count: Int, lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
    step: Int
  ) {
    table.adamw_step!(instance, param, grad, m, v, Int64(count), lr, beta1, beta2, eps, weightDecay, Int64(step))
  }
}

/// What the loader checks of a kernels table before it reads anything else: its version and size
/// (read from the first 8 bytes, so that a table smaller than this host's is never read past its
/// end), then that every required function is there.
enum KernelsTableCheck {
  /// Why the table at `pointer` is refused, or nil.
  static func problem(_ pointer: UnsafePointer<hydra_kernels>) -> String? {
    let raw = UnsafeRawPointer(pointer)
    let version = raw.load(as: UInt32.self)
    let size = raw.load(fromByteOffset: 4, as: UInt32.self)
    let expected = MemoryLayout<hydra_kernels>.size
    guard version >= 2, version <= UInt32(HYDRA_PLUGIN_ABI_VERSION) else {
      return
        "its kernels table says ABI version \(version), but kernels tables exist from version 2 and this hydra-mpi speaks up to version \(HYDRA_PLUGIN_ABI_VERSION)"
    }
    guard Int(size) >= expected else {
      return
        "its kernels table is \(size) bytes, but ABI version \(HYDRA_PLUGIN_ABI_VERSION)'s is \(expected) (struct_size must be sizeof(hydra_kernels)); rebuild against the header `hydra-mpi plugins --header` prints"
    }
    let missing = missingFunctions(pointer.pointee)
    guard missing.isEmpty else {
      return "its kernels table lacks required functions (NULL): \(missing.joined(separator: ", "))"
    }
    return nil
  }

  /// The names (as in the header) of the required functions that are NULL.
  static func missingFunctions(_ t: hydra_kernels) -> [String] {
    var required: [(String, Bool)] = [
      ("gemm", t.gemm != nil), ("gemm_batched", t.gemm_batched != nil), ("add_bias", t.add_bias != nil),
      ("accumulate_bias_gradient", t.accumulate_bias_gradient != nil), ("gelu_forward", t.gelu_forward != nil),
      ("gelu_backward", t.gelu_backward != nil), ("relu_forward", t.relu_forward != nil),
      ("relu_backward", t.relu_backward != nil), ("layer_norm_forward", t.layer_norm_forward != nil),
      ("layer_norm_backward", t.layer_norm_backward != nil), ("attention_forward", t.attention_forward != nil),
      ("attention_backward", t.attention_backward != nil), ("embedding_forward", t.embedding_forward != nil),
      ("embedding_backward", t.embedding_backward != nil),
      ("softmax_cross_entropy", t.softmax_cross_entropy != nil), ("add", t.add != nil),
      ("accumulate", t.accumulate != nil), ("copy", t.copy != nil), ("fill", t.fill != nil), ("scale", t.scale != nil),
      ("sum_of_squares", t.sum_of_squares != nil), ("sgd_step", t.sgd_step != nil), ("adamw_step", t.adamw_step != nil),
    ]
    if t.flags & UInt32(HYDRA_KERNELS_HOST_MEMORY) == 0 {
      required += [
        ("allocate", t.allocate != nil), ("deallocate", t.deallocate != nil),
        ("copy_to_device", t.copy_to_device != nil), ("copy_to_host", t.copy_to_host != nil),
        ("copy_on_device", t.copy_on_device != nil), ("synchronize", t.synchronize != nil),
      ]
    }
    return required.filter { !$0.1 }.map { $0.0 }
  }
}
