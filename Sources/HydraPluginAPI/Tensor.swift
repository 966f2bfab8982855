import Foundation

/// A contiguous, row-major, 64-byte aligned Float32 buffer with an explicit shape, charged to one
/// `DeviceMemory` (a device, or the host store) for as long as it holds its bytes.
///
/// Tensors are reference types: handing one from a block to the next (or from one device thread to
/// another under `shm`) is a reference, never a copy. Shard state moves by changing the charge
/// (`move(to:)`: on the CPU, device and host memory are the same RAM) or by leaving RAM for a file
/// (`evict(to:offset:)`, `restore(from:offset:memory:)`).
public final class Tensor: @unchecked Sendable {
  public static let alignment = 64

  public private(set) var shape: [Int]
  public let capacity: Int
  private var storage: UnsafeMutablePointer<Float>?
  public private(set) var memory: DeviceMemory?

  /// The bytes; only while the tensor is resident (not evicted to a file).
  public var data: UnsafeMutablePointer<Float> {
    guard let storage else { preconditionFailure("tensor \(shape) used while evicted to disk") }
    return storage
  }

  public var isResident: Bool { storage != nil }
  private var allocatedBytes: Int { max(capacity, 1) * MemoryLayout<Float>.stride }

  /// Buffers this large are mapped from the kernel and unmapped when freed, so that the process
  /// gives their memory back at once. From malloc, a freed buffer of a few MiB stays in the heap
  /// (glibc raises its mmap threshold after each large free) and the process's resident memory
  /// drifts gigabytes past what the budgets account for.
  static let mappedBytes = 256 << 10

  private static func allocateZeroed(_ count: Int) -> UnsafeMutablePointer<Float> {
    allocate(count, zeroed: true)
  }

  /// Storage for `count` floats (at least one), 64-byte aligned; zero-filled when `zeroed`.
  private static func allocate(_ count: Int, zeroed: Bool) -> UnsafeMutablePointer<Float> {
    let bytes = max(count, 1) * MemoryLayout<Float>.stride
    if bytes >= mappedBytes {
      // Fresh pages are zero already.
      guard let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED
      else { fatalError("out of memory: cannot map \(bytes) bytes for a tensor (\(String(cString: strerror(errno))))") }
      return p.bindMemory(to: Float.self, capacity: max(count, 1))
    }
    let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Tensor.alignment)
    if zeroed { raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1)) }
    return raw.assumingMemoryBound(to: Float.self)
  }

  private static func deallocate(_ p: UnsafeMutablePointer<Float>, count: Int) {
    let bytes = max(count, 1) * MemoryLayout<Float>.stride
    if bytes >= mappedBytes {
      munmap(UnsafeMutableRawPointer(p), bytes)
    } else {
      UnsafeMutableRawPointer(p).deallocate()
    }
  }

  /// Allocates a zero-filled tensor, charging `memory` (if given) for its bytes.
  public init(shape: [Int], memory: DeviceMemory? = nil) throws {
    precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
    let count = shape.reduce(1, *)
    try memory?.reserve(max(count, 1) * MemoryLayout<Float>.stride)
    self.storage = Tensor.allocateZeroed(count)
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
    if let storage {
      memory?.release(allocatedBytes)
      Tensor.deallocate(storage, count: capacity)
    }
  }

  /// Moves the charge for this tensor's bytes to `other` (no copy). Throws, changing nothing, when
  /// `other` has no room.
  public func move(to other: DeviceMemory?) throws {
    guard other !== memory else { return }
    if isResident {
      try other?.reserve(allocatedBytes)
      memory?.release(allocatedBytes)
    }
    memory = other
  }

  /// Writes the bytes to `file` at `offset` and frees them; with no file (a gradient, say, whose
  /// contents need not survive, or a state another process holds) just frees them.
  public func evict(to file: SpillFile?, offset: Int) throws {
    guard let storage else { return }
    if let file { try file.transfer(UnsafeMutableRawPointer(storage), byteCount, at: offset, reading: false) }
    Tensor.deallocate(storage, count: capacity)
    self.storage = nil
    memory?.release(allocatedBytes)
  }

  /// Allocates the bytes again, charged to `memory`, and reads them back from `file` at `offset`;
  /// with no file they come back zero.
  public func restore(from file: SpillFile?, offset: Int, memory newMemory: DeviceMemory?) throws {
    guard storage == nil else { return try move(to: newMemory) }
    try newMemory?.reserve(allocatedBytes)
    // Every byte is about to be read over when there is a file: no need to zero them first.
    let fresh = Tensor.allocate(capacity, zeroed: file == nil)
    if let file {
      do {
        try file.transfer(UnsafeMutableRawPointer(fresh), byteCount, at: offset, reading: true)
      } catch {
        Tensor.deallocate(fresh, count: capacity)
        newMemory?.release(allocatedBytes)
        throw error
      }
    }
    storage = fresh
    memory = newMemory
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

/// An open file that tensors leave RAM for and come back from (a host store's spill file). Owns its
/// descriptor, which closes when the last reference goes; nothing else sees it.
public final class SpillFile: @unchecked Sendable {
  public let path: String
  private let descriptor: Int32

  /// Opens `path` for reading, or for reading and writing (`create`: made if missing).
  public init(path: String, writable: Bool, create: Bool = false) throws {
    self.path = path
    descriptor = open(path, (writable ? O_RDWR : O_RDONLY) | (create ? O_CREAT : 0) | O_CLOEXEC, 0o644)
    guard descriptor >= 0 else {
      throw TensorIOError(message: "cannot open \(path): \(String(cString: strerror(errno)))")
    }
  }

  deinit { close(descriptor) }

  /// Reads (`reading`) or writes `count` bytes at `base` from or to `offset` of the file, whole.
  public func transfer(_ base: UnsafeMutableRawPointer, _ count: Int, at offset: Int, reading: Bool) throws {
    var done = 0
    while done < count {
      let n =
        reading
        ? pread(descriptor, base + done, count - done, off_t(offset + done))
        : pwrite(descriptor, base + done, count - done, off_t(offset + done))
      if n < 0 && errno == EINTR { continue }
      guard n > 0 else {
        throw TensorIOError(
          message:
            "\(path): \(reading ? "reading" : "writing") \(count) bytes at offset \(offset): \(n == 0 ? "unexpected end of file" : String(cString: strerror(errno)))"
        )
      }
      done += n
    }
  }
}

public struct TensorIOError: Error, CustomStringConvertible {
  public let message: String
  public var description: String { "spill file: \(message)" }
}

/// Int32 indices (tokens, class labels) in a plain array; they are small and never spilled alone.
public typealias Indices = [Int32]
