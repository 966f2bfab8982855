import Foundation

/// A named tensor a block trains, with its gradient and its optimizer state: the three move together
/// when a shard moves.
public final class Parameter {
  /// The checkpoint name: Hugging Face GPT-2 names for `gpt`, `nn.Sequential` names for `mlp`.
  public let name: String
  public let value: Tensor
  public let grad: Tensor
  /// Optimizer state (momentum, or AdamW's m and v), allocated by the optimizer on its first step.
  public var state: [Tensor] = []
  /// Weight decay applies to matrices (embeddings included), never to biases and norm gains.
  public let decays: Bool
  /// Set when this is a replica of another block's parameter (the `gpt` head's copy of the token
  /// embedding). A replica has no optimizer state: before its block's forward the runtime copies
  /// the owner's value in, and after its block's backward it adds the replica's gradient to the
  /// owner's, which then steps once.
  public let replicaOf: String?

  public init(name: String, shape: [Int], memory: DeviceMemory?, decays: Bool, replicaOf: String? = nil) throws {
    self.name = name
    self.value = try Tensor(shape: shape, memory: memory)
    self.grad =
      Parameter.parkingGradients
      ? try Tensor(parkedShape: shape, memory: memory) : try Tensor(shape: shape, memory: memory)
    self.decays = decays
    self.replicaOf = replicaOf
  }

  public var shape: [Int] { value.shape }
  public var count: Int { value.count }

  /// Runs `body`, in which parameters made on this thread get a parked gradient (`Tensor.park`):
  /// charged, with no bytes until a backward unparks it. For the runtime's models, whose shards
  /// unpark their gradients for a backward and park them after it.
  public static func withParkedGradients<T>(_ body: () throws -> T) rethrows -> T {
    let thread = pthread_self()
    parkingLock.lock()
    parkingThreads.insert(thread)
    parkingLock.unlock()
    defer {
      parkingLock.lock()
      parkingThreads.remove(thread)
      parkingLock.unlock()
    }
    return try body()
  }

  private static var parkingGradients: Bool {
    let thread = pthread_self()
    parkingLock.lock()
    defer { parkingLock.unlock() }
    return parkingThreads.contains(thread)
  }
}

private let parkingLock = NSLock()
nonisolated(unsafe) private var parkingThreads: Set<pthread_t> = []

/// The input of a block's forward: the previous block's output, or (for the first block) nothing
/// but the batch itself.
public struct BlockInput {
  public var activation: Tensor?
  public var batch: Batch
  public init(activation: Tensor?, batch: Batch) {
    self.activation = activation
    self.batch = batch
  }
}

/// The unit a model is cut at. Each block writes out its forward and backward, keeps what its
/// backward needs in buffers it owns (sized on first use for the largest batch seen, reused after),
/// and accumulates its parameters' gradients.
///
/// Lifetime rule: the tensor a forward returns stays valid until this block's next forward; the
/// tensor a backward returns stays valid until this block's next backward.
public protocol Block: AnyObject {
  /// "wte" for the embedding, "h.3" for a transformer block, "head", "0" for an `mlp` layer.
  var name: String { get }
  var parameters: [Parameter] { get }
  var costs: BlockCosts { get }
  func forward(_ input: BlockInput, kernels: Kernels) throws -> Tensor
  /// `dOutput` is nil for the last block, which takes its gradient from `LossBlock.loss`.
  /// Returns the gradient of the input activation, or nil for the first block.
  func backward(_ dOutput: Tensor?, kernels: Kernels) throws -> Tensor?
  /// The backward's scratch. The runtime gives the blocks of one shard one workspace to share.
  var workspace: Workspace { get set }
  /// The buffers the last forward filled that the backward reads (not its input, which the
  /// previous block owns): what the runtime moves to the host store between the two tasks.
  var keptTensors: [Tensor] { get }
  /// Frees every buffer the block holds (activations kept for the backward, backward scratch) and
  /// forgets its input: the device memory they were charged to gets it back. The next forward
  /// allocates them again.
  func releaseBuffers()
}

/// The last block of a model: turns its forward output into a loss against the batch's targets.
public protocol LossBlock: Block {
  /// Mean loss over the batch's predictions, and how many were right. With `keepGradient` the
  /// block stores dLoss/dOutput for its next `backward(nil)`.
  func loss(targets: [Int32], kernels: Kernels, keepGradient: Bool) throws -> (loss: Double, correct: Int, count: Int)
}

/// Scratch for backwards, by role ("wide0", "dx1", ...), shared by the blocks of a shard: each
/// role's buffer grows to the largest request and is reused by every block after.
public final class Workspace {
  private var buffers: [String: Buffer] = [:]
  public init() {}

  func get(_ role: String, _ shape: [Int], kernels: Kernels) throws -> Tensor {
    // Out of the dictionary first, so that a buffer regrown for a larger block is freed before
    // its successor is charged.
    var b = buffers.removeValue(forKey: role) ?? Buffer()
    defer { buffers[role] = b }
    return try b.get(shape, kernels: kernels)
  }

  /// Frees every buffer (the device gets their bytes back).
  public func release() { buffers.removeAll() }

  /// Bytes held now.
  public var bytes: Int { buffers.values.reduce(0) { $0 + ($1.tensor.map { max($0.capacity, 1) * 4 } ?? 0) } }
}

/// A buffer a block sizes on first use and regrows only when a larger batch arrives.
struct Buffer {
  private(set) var tensor: Tensor?

  mutating func release() { tensor = nil }

  mutating func get(_ shape: [Int], kernels: Kernels) throws -> Tensor {
    let need = shape.reduce(1, *)
    if let t = tensor, t.capacity >= need {
      t.reshape(shape)
      return t
    }
    tensor = nil  // release before charging the larger one
    // Not cleared: a reused buffer holds the last batch's values too, so a block writes its
    // buffers before it reads them. Clearing each task's fresh buffers was 5 % of the CPU time of
    // 8 small GPTs on one device (a serial pass while the device's other threads wait).
    let t = try kernels.allocate(shape, zeroed: false)
    tensor = t
    return t
  }
}
