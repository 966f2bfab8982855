import CHydraPlugin
import Foundation
import HydraRuntime

/// Loads shared libraries that implement `hydra_plugin.h` and registers their plugins beside the
/// built-ins, so that the runtime cannot tell the two apart.
///
/// Each library is opened with `dlopen` (and never closed: its code must outlive every plugin made
/// from it), its ABI version is checked before anything else is read, then `hydra_plugin_register`
/// adds its plugins. Every problem with a library is bad input (`InputError`, exit 2) naming its
/// file: missing, not a library, no entry point, an ABI version it does not speak, a name already
/// registered, a kernels table that is malformed.
public enum PluginLoader {
  /// The ABI version this host speaks.
  public static let abiVersion = Int(HYDRA_PLUGIN_ABI_VERSION)
  /// The versions of libraries it loads: every version is a superset of the one before (the
  /// registrar only grows at its end), so a library built against version 1 still loads.
  public static let abiVersions = Int(HYDRA_PLUGIN_ABI_OLDEST_VERSION)...abiVersion

  /// Loads `paths` in order into `builder`. A library's plugins are registered all or none.
  public static func load(_ paths: [String], into builder: inout PluginRegistry.Builder) throws {
    for path in paths { try load(path, into: &builder) }
  }

  static func load(_ path: String, into builder: inout PluginRegistry.Builder) throws {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
      throw InputError(file: path, "plugin library: no such file")
    }
    guard !isDirectory.boolValue, let bytes = FileManager.default.contents(atPath: path) else {
      throw InputError(file: path, "plugin library: not a readable file")
    }
    guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
      let why = dlerror().map { String(cString: $0) } ?? "unknown reason"
      throw InputError(file: path, "cannot be loaded as a shared library: \(why)")
    }
    typealias VersionFunction = @convention(c) () -> UInt32
    typealias RegisterFunction =
      @convention(c) (
        UnsafePointer<hydra_host>?, UnsafePointer<hydra_registrar>?, UnsafeMutablePointer<hydra_error>?
      ) -> Int32
    guard let versionSymbol = dlsym(handle, "hydra_plugin_abi_version"),
      let registerSymbol = dlsym(handle, "hydra_plugin_register")
    else {
      throw InputError(
        file: path,
        "not a hydra-mpi plugin: it exports no hydra_plugin_abi_version and hydra_plugin_register (see `hydra-mpi plugins --header`)"
      )
    }
    let version = Int(unsafeBitCast(versionSymbol, to: VersionFunction.self)())
    guard abiVersions.contains(version) else {
      throw InputError(
        file: path,
        "built for plugin ABI version \(version), but this hydra-mpi speaks ABI versions \(abiVersions.lowerBound) to \(abiVersion); rebuild the plugin against the header `hydra-mpi plugins --header` prints"
      )
    }
    let registration = Registration(
      file: path, version: version, builder: builder, fingerprint: "\(bytes.count) bytes, fnv1a \(fnv1a(bytes))")
    let context = Unmanaged.passRetained(registration)
    defer { context.release() }
    var error = hydra_error()
    let code = path.withCString { cPath -> Int32 in
      var host = hydra_host(abi_version: UInt32(HYDRA_PLUGIN_ABI_VERSION), plugin_path: cPath)
      var registrar = hydra_registrar(
        host: context.toOpaque(), add_scheduler: addScheduler, add_partitioner: addPartitioner,
        add_transport: addTransport, add_kernels: addKernels)
      return unsafeBitCast(registerSymbol, to: RegisterFunction.self)(&host, &registrar, &error)
    }
    // The registrar's own refusal (a name clash) comes first: the plugin may have passed it on or not.
    if let failure = registration.failure { throw InputError(file: path, failure) }
    guard code == HYDRA_OK else {
      throw InputError(file: path, "hydra_plugin_register failed (code \(code)): \(pluginMessage(error))")
    }
    builder = registration.builder
  }

  /// What one library's `hydra_plugin_register` adds, checked as it goes.
  final class Registration {
    let file: String
    /// The ABI version the library was built against.
    let version: Int
    var builder: PluginRegistry.Builder
    let fingerprint: String
    /// The first registration refused, and why.
    var failure: String?
    init(file: String, version: Int, builder: PluginRegistry.Builder, fingerprint: String) {
      self.file = file
      self.version = version
      self.builder = builder
      self.fingerprint = fingerprint
    }

    /// Checks a name; on a refusal records it, writes it into `error` and returns false.
    func admit(
      _ kind: PluginOrigin.Kind, _ cName: UnsafePointer<CChar>?, _ callbacks: [Bool],
      _ error: UnsafeMutablePointer<hydra_error>?
    ) -> String? {
      var why: String?
      let name = cName.flatMap { boundedString($0, limit: 256) } ?? ""
      if cName == nil || name.isEmpty || name.count > 200 {
        why = "a \(kind.rawValue) has no name (or one longer than 200 characters)"
      } else if let clash = Optional(builder.registered(kind, name)), clash.found {
        why =
          "\(kind.rawValue) \"\(name)\" is already registered \(clash.file.map { "by the plugin library \($0)" } ?? "(built in)"); choose another name"
      } else if callbacks.contains(false) {
        why = "\(kind.rawValue) \"\(name)\" lacks a required callback (NULL)"
      }
      if let why {
        if failure == nil { failure = why }
        write(why, to: error)
        return nil
      }
      builder.note(
        PluginOrigin(kind: kind, name: name, file: file, abiVersion: version, fingerprint: fingerprint))
      return name
    }
  }

  static func registration(_ host: UnsafeMutableRawPointer?) -> Registration {
    Unmanaged<Registration>.fromOpaque(host!).takeUnretainedValue()
  }

  static let addScheduler:
    @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<hydra_scheduler>?, UnsafeMutablePointer<hydra_error>?) ->
      Int32 = { host, table, error in
        let r = registration(host)
        guard let table = table?.pointee,
          let name = r.admit(.scheduler, table.name, [table.schedule != nil], error)
        else {
          if table == nil { write("add_scheduler: NULL table", to: error) }
          return HYDRA_ERROR
        }
        let made = CTable(table), file = r.file
        do {
          try r.builder.registerScheduler(name) { options, seed in
            try CScheduler(made.value, name: name, file: file, options: options, seed: seed)
          }
        } catch let e {
          write("\(e)", to: error)
          return HYDRA_ERROR
        }
        return HYDRA_OK
      }

  static let addPartitioner:
    @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<hydra_partitioner>?, UnsafeMutablePointer<hydra_error>?)
      -> Int32 = { host, table, error in
        let r = registration(host)
        guard let table = table?.pointee,
          let name = r.admit(.partitioner, table.name, [table.partition != nil], error)
        else {
          if table == nil { write("add_partitioner: NULL table", to: error) }
          return HYDRA_ERROR
        }
        let made = CTable(table), file = r.file
        do {
          try r.builder.registerPartitioner(name) { CPartitioner(made.value, name: name, file: file) }
        } catch let e {
          write("\(e)", to: error)
          return HYDRA_ERROR
        }
        return HYDRA_OK
      }

  static let addTransport:
    @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<hydra_transport>?, UnsafeMutablePointer<hydra_error>?) ->
      Int32 = { host, table, error in
        let r = registration(host)
        guard let table = table?.pointee,
          let name = r.admit(
            .backend, table.name,
            [
              table.create != nil, table.send != nil, table.poll != nil, table.is_idle != nil,
              table.all_gather != nil,
            ],
            error)
        else {
          if table == nil { write("add_transport: NULL table", to: error) }
          return HYDRA_ERROR
        }
        let made = CTable(table), file = r.file
        do {
          // One device per rank, as for "mpi": `devices` is checked against the ranks by the runtime.
          try r.builder.registerBackend(name) { _ in
            try DistributedRuntime(transport: try CTransport(made.value, name: name, file: file))
          }
        } catch let e {
          write("\(e)", to: error)
          return HYDRA_ERROR
        }
        return HYDRA_OK
      }

  static let addKernels:
    @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<hydra_kernels>?, UnsafeMutablePointer<hydra_error>?) ->
      Int32 = { host, pointer, error in
        let r = registration(host)
        guard let pointer else {
          write("add_kernels: NULL table", to: error)
          if r.failure == nil { r.failure = "add_kernels: NULL table" }
          return HYDRA_ERROR
        }
        if let problem = KernelsTableCheck.problem(pointer) {
          if r.failure == nil { r.failure = problem }
          write(problem, to: error)
          return HYDRA_ERROR
        }
        let table = pointer.pointee
        guard let name = r.admit(.kernels, table.name, [], error) else { return HYDRA_ERROR }
        let made = CTable(table), file = r.file
        do {
          try r.builder.registerKernels(name) { threads, memory in
            try CKernels(made.value, name: name, file: file, threads: threads, memory: memory)
          }
        } catch let e {
          write("\(e)", to: error)
          return HYDRA_ERROR
        }
        return HYDRA_OK
      }

  /// FNV-1a of a library's bytes: the same on every rank for the same file.
  static func fnv1a(_ bytes: Data) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
      h ^= UInt64(b)
      h = h &* 0x100_0000_01b3
    }
    return String(h, radix: 16)
  }
}

/// A plugin's table of function pointers and context, kept as registered. The plugin promises the
/// context lives until the process ends and its functions may be called as `hydra_plugin.h` says.
struct CTable<T>: @unchecked Sendable {
  let value: T
  init(_ value: T) { self.value = value }
}

/// A plugin callback failed or answered out of range: the job stops (exit 1) with the library's
/// file, the plugin's name and what went wrong.
public struct PluginError: Error, CustomStringConvertible, Sendable {
  public var file: String
  public var kind: String
  public var name: String
  public var message: String
  public init(file: String, kind: String, name: String, _ message: String) {
    self.file = file
    self.kind = kind
    self.name = name
    self.message = message
  }
  public var description: String { "plugin \(file): \(kind) \"\(name)\": \(message)" }
}

/// The message a plugin wrote, read no further than the buffer (a missing NUL is tolerated).
func pluginMessage(_ error: hydra_error) -> String {
  var e = error
  let text = withUnsafeBytes(of: &e.message) { raw -> String in
    let bytes = raw.prefix { $0 != 0 }
    return String(decoding: bytes, as: UTF8.self)
  }
  return text.isEmpty ? "(no message)" : text
}

/// Writes `text` (truncated, NUL-terminated) into a plugin's error buffer.
func write(_ text: String, to error: UnsafeMutablePointer<hydra_error>?) {
  guard let error else { return }
  withUnsafeMutableBytes(of: &error.pointee.message) { raw in
    let bytes = Array(text.utf8.prefix(raw.count - 1))
    raw.copyBytes(from: bytes)
    raw[bytes.count] = 0
  }
}

/// A C string of at most `limit` bytes before its NUL; nil when longer.
func boundedString(_ p: UnsafePointer<CChar>, limit: Int) -> String? {
  var n = 0
  while p[n] != 0 {
    n += 1
    if n > limit { return nil }
  }
  return String(cString: p)
}

/// `options` as C key/value strings (values as TOML literals), valid during `body`.
func withCOptions<R>(_ options: [String: ConfigValue], _ body: (UnsafePointer<hydra_option>?, Int64) throws -> R)
  rethrows -> R
{
  let keys = options.keys.sorted()
  let strings = keys.flatMap { [strdup($0), strdup(options[$0]!.description)] }
  defer { strings.forEach { free($0) } }
  let table = keys.indices.map {
    hydra_option(key: UnsafePointer(strings[2 * $0]), value: UnsafePointer(strings[2 * $0 + 1]))
  }
  return try table.withUnsafeBufferPointer { try body($0.baseAddress, Int64(table.count)) }
}
