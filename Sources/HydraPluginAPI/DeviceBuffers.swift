import Foundation

/// The memory of a device that the host cannot address directly (a GPU's, `discrete`'s arena),
/// owned by the device's kernels plugin: it allocates and frees the buffers and performs every copy
/// between them and host memory. The runtime never dereferences a device buffer; it holds its
/// address (`Tensor.data`) only to hand it to the same plugin's kernels.
///
/// A plugin whose device memory *is* host memory (`cpu`, `reference`) has none: its
/// `DeviceMemory.buffers` is nil, tensors stay in host RAM, and moving one between the host store
/// and the device is an accounting move, no copy at all.
///
/// Copies are complete when they return (the host buffer may be reused or read at once).
/// `synchronize` waits for kernels the plugin may still be running asynchronously.
/// Several threads may call at once (a device's task and a prefetch onto the same device).
public protocol DeviceBuffers: AnyObject, Sendable {
  /// `byteCount` bytes (at least 1) of device memory, 64-byte aligned, zero-filled when `zeroed`.
  func allocate(byteCount: Int, zeroed: Bool) -> UnsafeMutableRawPointer
  /// Frees a buffer of `allocate` (`byteCount` as allocated).
  func deallocate(_ buffer: UnsafeMutableRawPointer, byteCount: Int)
  /// Host -> device.
  func copy(fromHost source: UnsafeRawPointer, toDevice destination: UnsafeMutableRawPointer, byteCount: Int)
  /// Device -> host.
  func copy(fromDevice source: UnsafeRawPointer, toHost destination: UnsafeMutableRawPointer, byteCount: Int)
  /// Device -> device, both buffers of this plugin instance.
  func copy(onDevice source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, byteCount: Int)
  /// Returns once every kernel and copy issued so far has finished.
  func synchronize()
  /// The copies made so far, each way.
  var traffic: DeviceTraffic { get }
}

/// Copies between a device and the host, counted by the device's plugin.
public struct DeviceTraffic: Sendable, Equatable, CustomStringConvertible {
  public var hostToDeviceCopies = 0
  public var hostToDeviceBytes = 0
  public var deviceToHostCopies = 0
  public var deviceToHostBytes = 0
  public var deviceToDeviceCopies = 0
  public var deviceToDeviceBytes = 0
  public init() {}
  public var description: String {
    "h->d \(hostToDeviceCopies) copies \(hostToDeviceBytes) B, d->h \(deviceToHostCopies) copies "
      + "\(deviceToHostBytes) B, d->d \(deviceToDeviceCopies) copies \(deviceToDeviceBytes) B"
  }
}

/// The copies a `DeviceBuffers` made, counted from any thread: what a plugin's `traffic` returns.
public final class DeviceTrafficCounter: @unchecked Sendable {
  public enum Direction: Sendable { case hostToDevice, deviceToHost, deviceToDevice }
  private let lock = NSLock()
  private var counted = DeviceTraffic()
  public init() {}

  /// One copy of `byteCount` bytes `direction`.
  public func record(_ direction: Direction, byteCount: Int) {
    lock.lock()
    defer { lock.unlock() }
    switch direction {
    case .hostToDevice:
      counted.hostToDeviceCopies += 1
      counted.hostToDeviceBytes += byteCount
    case .deviceToHost:
      counted.deviceToHostCopies += 1
      counted.deviceToHostBytes += byteCount
    case .deviceToDevice:
      counted.deviceToDeviceCopies += 1
      counted.deviceToDeviceBytes += byteCount
    }
  }

  public var traffic: DeviceTraffic {
    lock.lock()
    defer { lock.unlock() }
    return counted
  }
}
