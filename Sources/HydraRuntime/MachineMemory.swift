import Foundation

/// This machine's memory, for the budgets a job file leaves out.
enum MachineMemory {
  /// `physicalMemory / fraction / parts`, in whole MiB (at least 1 MiB).
  static func share(fraction: Int, parts: Int) -> Int {
    let total = Int(clamping: ProcessInfo.processInfo.physicalMemory)
    let bytes = total / max(fraction, 1) / max(parts, 1)
    return max(bytes / (1 << 20), 1) << 20
  }

  /// The processes of this job on this machine, as an MPI launcher tells them (1 when none does).
  static var localProcesses: Int {
    let env = ProcessInfo.processInfo.environment
    for key in ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"] {
      if let v = env[key].flatMap({ Int($0) }), v >= 1 { return v }
    }
    return 1
  }
}

extension MachineMemory {
  /// The most resident memory this process has held (Linux's VmHWM), or nil where unknown.
  static var processPeakResidentBytes: Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
      let fields = line.split(separator: " ", omittingEmptySubsequences: true)
      if fields.count >= 2, let kib = Int(fields[1]) { return kib * 1024 }
    }
    return nil
  }
}
