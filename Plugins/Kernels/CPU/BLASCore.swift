import CBLAS
import Foundation

/// Choosing OpenBLAS's kernel set.
///
/// OpenBLAS picks its kernels for the processor when the library loads. Debian's 0.3.21 does not
/// know recent Intel server parts (Sapphire Rapids: family 6, model 143/207) and falls back to its
/// generic "Prescott" kernels, about 4.5x slower at sgemm. The kernel set can only be chosen
/// through the environment before the library loads, so the command-line tools restart themselves
/// once with `OPENBLAS_CORETYPE` set when that happens. A value the user set is never changed.
public enum BLASCore {
  /// The kernel set to restart with, or nil when OpenBLAS already uses a real one, the user chose
  /// one, or this processor offers nothing better.
  public static func betterCoreType() -> String? {
    let env = ProcessInfo.processInfo.environment
    guard env["OPENBLAS_CORETYPE"] == nil, CPUKernels.blasCoreName.lowercased() == "prescott" else { return nil }
    guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
      let flagsLine = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
    else { return nil }
    let flags = Set(flagsLine.split(separator: " ").map(String.init))
    if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq"]) { return "SkylakeX" }
    if flags.isSuperset(of: ["avx2", "fma"]) { return "Haswell" }
    return nil
  }

  /// Replaces this process by itself with `OPENBLAS_CORETYPE` set, when `betterCoreType()` finds one.
  /// Returns only when no restart is needed (or the restart failed, which leaves the slow kernels).
  public static func restartWithBetterCoreIfNeeded() {
    guard let core = betterCoreType() else { return }
    setenv("OPENBLAS_CORETYPE", core, 1)
    let args = CommandLine.arguments
    var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
    argv.append(nil)
    // The binary's own path, not /proc/self/exe: exec'd through that link the process is named
    // "exe", and whatever finds ranks by name (pgrep, Scripts/test-mpi, a cluster's tools) misses it.
    var path = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &path, path.count - 1)
    execv(n > 0 ? String(cString: path) : "/proc/self/exe", &argv)
    // Only reached if exec failed: carry on with the generic kernels.
    unsetenv("OPENBLAS_CORETYPE")
  }
}
