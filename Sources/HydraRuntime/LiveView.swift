import Foundation

/// What a user watches while a job runs. On a terminal: one line per model (steps done/total, last
/// loss, status) and per device (busy share, current task), redrawn in place twice a second. When
/// the output is not a terminal (a log file, a batch system), nothing is redrawn: `JobRunner`
/// prints plain progress lines instead.
public final class LiveView: @unchecked Sendable {
  public static var outputIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }

  private let coordinator: Coordinator
  private let timer: DispatchSourceTimer
  private var drawnLines = 0
  private let lock = NSLock()

  public init(coordinator: Coordinator) {
    self.coordinator = coordinator
    timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "hydra.live-view"))
  }

  public func start() {
    timer.schedule(deadline: .now(), repeating: .milliseconds(500))
    timer.setEventHandler { [weak self] in self?.draw() }
    timer.resume()
  }

  /// Draws a last time and stops.
  public func stop() {
    timer.cancel()
    draw()
  }

  func draw() {
    lock.lock()
    defer { lock.unlock() }
    var lines: [String] = []
    for p in coordinator.modelSnapshot() {
      let loss = p.loss.map { String(format: "%.4f", $0) } ?? "-"
      let val = p.validationLoss.map { String(format: " val %.4f", $0) } ?? ""
      let bar = progressBar(Double(p.step) / Double(max(p.steps, 1)), width: 20)
      lines.append("\(p.id) \(bar) \(p.step)/\(p.steps) loss \(loss)\(val) \(p.status)")
    }
    for (d, snapshot) in coordinator.deviceSnapshot().enumerated() {
      lines.append(
        String(format: "device %d %3.0f%% busy  %@", d, snapshot.busyFraction * 100, snapshot.task ?? "idle"))
    }
    var out = drawnLines > 0 ? "\u{1B}[\(drawnLines)A" : ""
    for line in lines { out += "\u{1B}[2K" + line + "\n" }
    drawnLines = lines.count
    FileHandle.standardOutput.write(Data(out.utf8))
  }

  private func progressBar(_ fraction: Double, width: Int) -> String {
    let filled = Int((fraction * Double(width)).rounded(.down))
    return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
  }
}
