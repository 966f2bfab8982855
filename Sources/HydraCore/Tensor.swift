import Foundation

/// A contiguous, row-major, 64-byte aligned Float32 buffer with an explicit shape, charged to the
/// `DeviceMemory` it was allocated from for as long as it lives.
///
/// Tensors are reference types: handing one from a block to the next (or from one device thread to
/// another under `shm`) is a reference, never a copy.
public final class Tensor: @unchecked Sendable {
  public static let alignment = 64

  public private(set) var shape: [Int]
  public let capacity: Int
  public let data: UnsafeMutablePointer<Float>
  private let memory: DeviceMemory?

  /// Allocates a zero-filled tensor, charging `memory` (if given) for its bytes.
  public init(shape: [Int], memory: DeviceMemory? = nil) throws {
    precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
    let count = shape.reduce(1, *)
    let bytes = max(count, 1) * MemoryLayout<Float>.stride
    try memory?.reserve(bytes)
    let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Tensor.alignment)
    raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1))
    self.data = raw.assumingMemoryBound(to: Float.self)
    self.shape = shape
    self.capacity = count
    self.memory = memory
  }

  /// A tensor holding `values`, not charged to any device (tests and loading).
  public convenience init(shape: [Int], values: [Float], memory: DeviceMemory? = nil) throws {
    precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
    try self.init(shape: shape, memory: memory)
    values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: values.count) }
  }

  deinit {
    memory?.release(max(capacity, 1) * MemoryLayout<Float>.stride)
    UnsafeMutableRawPointer(data).deallocate()
  }

  public var count: Int { shape.reduce(1, *) }
  public var byteCount: Int { count * MemoryLayout<Float>.stride }
  public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: data, count: count) }
  public var array: [Float] { Array(buffer) }

  /// Reinterprets the same buffer with another shape of at most `capacity` elements: lets a block
  /// keep one buffer sized for the largest batch and use a prefix for a smaller one.
  public func reshape(_ newShape: [Int]) {
    precondition(newShape.reduce(1, *) <= capacity, "reshape \(shape) -> \(newShape) exceeds capacity")
    shape = newShape
  }

  public subscript(i: Int) -> Float {
    get { data[i] }
    set { data[i] = newValue }
  }

  public func copy(from other: Tensor) {
    precondition(other.count == count, "copy \(other.shape) into \(shape)")
    data.update(from: other.data, count: count)
  }

  public func zero() { data.update(repeating: 0, count: count) }

  /// True when both hold the same bits (NaNs included): the exactness invariant compares this way.
  public func bitwiseEqual(_ other: Tensor) -> Bool {
    guard shape == other.shape else { return false }
    return memcmp(data, other.data, byteCount) == 0
  }
}

/// Int32 indices (tokens, class labels) in a plain array; they are small and never spilled alone.
public typealias Indices = [Int32]
