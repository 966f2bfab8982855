import Foundation

/// Whether process `pid` of this host is alive: it exists (or exists under another user) and is not
/// a zombie (killed and not yet reaped; in a container whose first process does not reap, it stays
/// one for good). Where `/proc` cannot be read, existence alone decides.
func isAlive(pid: Int32) -> Bool {
  guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
  if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
    let close = stat.lastIndex(of: ")")
  {
    // "pid (comm) S ...": the state follows the command name, which may hold spaces or ')'.
    let state = stat[stat.index(after: close)...].drop { $0 == " " }.first
    if state == "Z" || state == "X" { return false }
  }
  return true
}
