import Foundation

/// The two pictures of the output folder, `schedule.svg` and `loss.svg`, as plain SVG text.
///
/// Pure functions: no files, no clocks. A model's colour is its rank among the sorted model ids
/// (cycling through `palette`), so the same model has the same colour in both pictures.
public enum Charts {
  /// Twelve distinguishable colours (category10 and two more), used in order and cycled.
  public static let palette = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#e7ba52",
  ]

  /// The plot area shared by both pictures: `left` pixels of labels, then `plotWidth` of data.
  static let width = 900.0, left = 80.0, plotWidth = 800.0, top = 44.0
  /// Schedule lanes: one `rowHeight` per device, boxes `boxHeight` high, centred.
  static let rowHeight = 30.0, boxHeight = 24.0
  /// Loss plot height.
  static let plotHeight = 400.0
  /// Legend grid under the plot.
  static let legendColumn = 160.0, legendRow = 18.0, legendMax = 240
  /// The most boxes a schedule draws (about 130 bytes each).
  static let boxBudget = 10_000

  // MARK: - schedule.svg

  /// A Gantt chart of `events`: a lane per device, time in seconds across, a box per task coloured
  /// by model (evaluations hatched). Boxes of one model that are less than a pixel apart are merged,
  /// and tasks under half a pixel wide fold into the box before them while it is under a pixel wide
  /// (each pixel shows the model whose task began it), so a lane holds at most about three boxes per
  /// pixel; where all lanes together would pass `boxBudget`, the "pixel" doubles until they do not.
  public static func schedule(_ events: [TraceEvent], devices: Int, title: String) -> String {
    let lanes = max(devices, (events.map(\.device).max() ?? -1) + 1, 1)
    let bottom = top + Double(lanes) * rowHeight
    let models = Array(Set(events.map(\.model))).sorted()
    guard !events.isEmpty else { return noData(title) }
    let colour = Dictionary(uniqueKeysWithValues: models.enumerated().map { ($1, $0 % palette.count) })
    let tmax = events.map(\.end).max() ?? 0
    let axis = Ticks(0, tmax > 0 ? tmax : 1)
    let scale = plotWidth / (axis.hi - axis.lo)
    let (legend, legendHeight) = legendBlock(models, colour: colour, top: bottom + 48, eval: true)
    var s = header(height: bottom + 56 + legendHeight, title: title)
    s += "<defs>"
    for (k, c) in palette.enumerated() {
      s += "<pattern id=\"e\(k)\" width=\"5\" height=\"5\" patternUnits=\"userSpaceOnUse\""
      s += " patternTransform=\"rotate(45)\"><path d=\"M0 0h5v5h-5z\" fill=\"#fff\"/>"
      s += "<path d=\"M1.5 0v5\" stroke=\"\(c)\" stroke-width=\"3\"/></pattern>"
    }
    s += "</defs>\n<g class=\"lanes\">"
    for d in 0..<lanes {
      let y = top + Double(d) * rowHeight
      s += "<rect x=\"\(f(left))\" y=\"\(f(y))\" width=\"\(f(plotWidth))\" height=\"\(f(rowHeight))\""
      s += " fill=\"\(d % 2 == 0 ? "#f4f4f4" : "#fbfbfb")\"/>"
      s += "<text x=\"\(f(left - 8))\" y=\"\(f(y + rowHeight / 2 + 4))\" text-anchor=\"end\">device \(d)</text>"
    }
    s += "</g>\n" + xAxis(axis, scale: scale, top: top, bottom: bottom, label: "time (s)")
    s += "<g class=\"events\">\n"
    var byLane = [[TraceEvent]](repeating: [], count: lanes)
    for e in events where e.device >= 0 { byLane[e.device].append(e) }
    byLane = byLane.map { $0.sorted { $0.start < $1.start } }
    var pixel = 1 / scale, drawn = byLane.map { boxes($0, pixel: pixel) }
    while drawn.map(\.count).reduce(0, +) > boxBudget && pixel * scale < plotWidth {
      pixel *= 2
      drawn = byLane.map { boxes($0, pixel: pixel) }
    }
    for d in 0..<lanes {
      let y = top + Double(d) * rowHeight + (rowHeight - boxHeight) / 2
      for b in drawn[d] {
        let x = left + (b.start - axis.lo) * scale
        let w = min(max((b.end - b.start) * scale, 0.5), left + plotWidth - x)
        let k = colour[b.model]!
        s += "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(w))\" height=\"\(f(boxHeight))\""
        s += " fill=\"\(b.eval ? "url(#e\(k))" : palette[k])\"><title>\(escape(b.tooltip))</title></rect>\n"
      }
    }
    return s + "</g>\n" + legend + "</svg>\n"
  }

  /// One drawn box: a task, or a run of merged tasks.
  struct Box {
    var model: String, eval: Bool, name: String, start: Double, end: Double
    var count = 1, firstStep: Int, lastStep: Int, others = 0

    var tooltip: String {
      let steps = firstStep == lastStep ? "step \(firstStep)" : "steps \(firstStep)–\(lastStep)"
      var t = count == 1 ? "\(model) \(name), \(steps)" : "\(model): \(count) tasks, \(steps)"
      t += "\nstart \(f(start, 3)) s, duration \(f(end - start, 3)) s"
      if others > 0 { t += "\n+ \(others) shorter task\(others == 1 ? "" : "s") of other models" }
      return t
    }
  }

  /// Merges the lane's `events` (sorted by start) for drawing, `pixel` being a pixel in seconds.
  static func boxes(_ events: [TraceEvent], pixel: Double) -> [Box] {
    var out: [Box] = []
    for e in events {
      let eval = e.name == "eval"
      if var b = out.last, e.start - b.end < pixel {
        if b.model == e.model && b.eval == eval {
          b.count += 1
          b.firstStep = min(b.firstStep, e.step)
          b.lastStep = max(b.lastStep, e.step)
        } else if e.end - e.start < pixel / 2 && b.end - b.start < pixel {
          b.others += 1
        } else {
          out.append(
            Box(
              model: e.model, eval: eval, name: e.name, start: e.start, end: e.end, firstStep: e.step, lastStep: e.step)
          )
          continue
        }
        b.end = max(b.end, e.end)
        out[out.count - 1] = b
      } else {
        out.append(
          Box(model: e.model, eval: eval, name: e.name, start: e.start, end: e.end, firstStep: e.step, lastStep: e.step)
        )
      }
    }
    return out
  }

  // MARK: - loss.svg

  /// Loss per model over steps: the validation losses (`series`) as markers joined by a line and,
  /// where given, the training losses (`training`, one point per step) as a smoothed solid line,
  /// the validation line then dashed. Non-finite points are left out, so a diverged model's lines
  /// end where it diverged, and a model whose rows end (stopped early) has lines that end there.
  public static func loss(
    _ series: [(model: String, points: [(step: Int, loss: Double)])],
    training: [(model: String, points: [(step: Int, loss: Double)])] = [], title: String, yLabel: String
  ) -> String {
    let clean = series.map { (model: $0.model, points: $0.points.filter { $0.loss.isFinite }) }
    let span = smoothingSpan(rows: training.map(\.points.count).max() ?? 0)
    let smooth = training.map { (model: $0.model, points: thinned(smoothed($0.points, span: span))) }
    let all = clean.flatMap(\.points) + smooth.flatMap(\.points)
    guard !all.isEmpty else { return noData(title) }
    var order: [String] = []
    for m in clean.map(\.model) + smooth.map(\.model) where !order.contains(m) { order.append(m) }
    let models = order.sorted()
    let colour = Dictionary(uniqueKeysWithValues: models.enumerated().map { ($1, $0 % palette.count) })
    let xs = widen(Double(all.map(\.step).min()!), Double(all.map(\.step).max()!), by: 1)
    let ys = widen(all.map(\.loss).min()!, all.map(\.loss).max()!)
    let xAxisTicks = Ticks(xs.lo, xs.hi, minStep: 1), yAxisTicks = Ticks(ys.lo, ys.hi)
    let sx = plotWidth / (xAxisTicks.hi - xAxisTicks.lo), sy = plotHeight / (yAxisTicks.hi - yAxisTicks.lo)
    let bottom = top + plotHeight
    func point(_ p: (step: Int, loss: Double)) -> (x: Double, y: Double) {
      (x: left + (Double(p.step) - xAxisTicks.lo) * sx, y: bottom - (p.loss - yAxisTicks.lo) * sy)
    }
    let (legend, legendHeight) = legendBlock(models, colour: colour, top: bottom + 48, eval: false)
    var s = header(height: bottom + 56 + legendHeight, title: title)
    if !smooth.allSatisfy(\.points.isEmpty) {
      let how = span == 1 ? "unsmoothed" : "exponential moving average, span \(span) steps"
      s += "<text class=\"key\" x=\"\(f(left + plotWidth))\" y=\"\(f(top - 6))\" text-anchor=\"end\" font-size=\"11\""
      s += " fill=\"#555\">solid: training loss (\(how)); dots: validation loss</text>\n"
    }
    s +=
      "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotWidth))\" height=\"\(f(plotHeight))\" fill=\"#fafafa\"/>\n"
    s += xAxis(xAxisTicks, scale: sx, top: top, bottom: bottom, label: "step")
    s += "<g class=\"y-axis\" font-size=\"11\">"
    for v in yAxisTicks.values {
      let y = bottom - (v - yAxisTicks.lo) * sy
      s += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotWidth))\" y2=\"\(f(y))\" stroke=\"#ddd\"/>"
      s += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(yAxisTicks.label(v))</text>"
    }
    s += "<line x1=\"\(f(left))\" y1=\"\(f(top))\" x2=\"\(f(left))\" y2=\"\(f(bottom))\" stroke=\"#333\"/>"
    s += "<text transform=\"translate(18 \(f(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\""
    s += " font-size=\"12\">\(escape(yLabel))</text></g>\n<g class=\"series\" fill=\"none\" stroke-width=\"1.5\">\n"
    for model in order {
      let val = clean.first { $0.model == model }?.points ?? []
      let train = smooth.first { $0.model == model }?.points ?? []
      guard !val.isEmpty || !train.isEmpty else { continue }
      let c = palette[colour[model]!]
      s += "<g><title>\(escape(model))</title>"
      if !train.isEmpty {
        s += "<polyline class=\"train\" stroke=\"\(c)\" points=\""
        s +=
          train.map {
            let q = point($0); return "\(f(q.x)),\(f(q.y))"
          }.joined(separator: " ") + "\"/>"
      }
      if !val.isEmpty {
        let pts = val.map { (q: point($0), p: $0) }
        s +=
          "<polyline class=\"val\" stroke=\"\(c)\"\(train.isEmpty ? "" : " stroke-width=\"1\" stroke-dasharray=\"4 3\"")"
        s += " points=\"" + pts.map { "\(f($0.q.x)),\(f($0.q.y))" }.joined(separator: " ") + "\"/>"
        if pts.count <= 200 {
          for q in pts {
            s += "<circle cx=\"\(f(q.q.x))\" cy=\"\(f(q.q.y))\" r=\"2.5\" fill=\"\(c)\" stroke=\"none\">"
            s += "<title>\(escape("\(model) step \(q.p.step): \(f(q.p.loss, 4))"))</title></circle>"
          }
        }
      }
      s += "</g>\n"
    }
    return s + "</g>\n" + legend + "</svg>\n"
  }

  /// The most points a training line draws: two per pixel of the plot. Longer lines keep every
  /// k-th point and their last, so that a line still ends at its model's last step.
  static let linePoints = 1600

  /// The smoothing window of training lines, in steps: a fiftieth of the longest model's rows, so
  /// that noise from batch to batch is averaged away but a change over a few percent of the run
  /// still shows. The same for every model of a chart, so that their lines compare.
  static func smoothingSpan(rows: Int) -> Int { max(1, rows / 50) }

  /// An exponential moving average of the finite losses with the decay of a `span`-point window
  /// (alpha = 2 / (span + 1)), started at the first loss rather than at zero so that the line does
  /// not rise from the axis. Causal: each point averages only the steps up to it, so a line ends at
  /// its model's last step and value, never pulled by steps the model did not train.
  static func smoothed(_ points: [(step: Int, loss: Double)], span: Int) -> [(step: Int, loss: Double)] {
    let alpha = 2 / (Double(span) + 1)
    var average: Double?
    return points.filter { $0.loss.isFinite }.map { p in
      let next = average.map { $0 + alpha * (p.loss - $0) } ?? p.loss
      average = next
      return (step: p.step, loss: next)
    }
  }

  /// `points` cut to at most `linePoints`, the last one always kept.
  static func thinned(_ points: [(step: Int, loss: Double)]) -> [(step: Int, loss: Double)] {
    guard points.count > linePoints else { return points }
    let every = (points.count + linePoints - 2) / (linePoints - 1)
    var kept = stride(from: 0, to: points.count - 1, by: every).map { points[$0] }
    kept.append(points[points.count - 1])
    return kept
  }

  /// A range with room in it: equal ends are pushed apart (`by`, or 10%, or 1 around zero).
  static func widen(_ lo: Double, _ hi: Double, by: Double? = nil) -> (lo: Double, hi: Double) {
    if hi > lo { return (lo, hi) }
    let d = by ?? (lo == 0 ? 1 : abs(lo) * 0.1)
    return (lo - d, hi + d)
  }

  // MARK: - Shared pieces

  /// Round-number ticks covering `lo...hi`: a step of 1, 2 or 5 times a power of ten giving about
  /// `count` intervals (and at least `minStep`); the axis runs from the tick at or below `lo` to the
  /// one at or above `hi`.
  struct Ticks {
    var lo: Double, hi: Double, step: Double, values: [Double]

    init(_ lo: Double, _ hi: Double, count: Double = 6, minStep: Double = 0) {
      let raw = (hi - lo) / count
      let mag = pow(10, (log10(raw)).rounded(.down))
      let q = raw / mag
      let step = max((q <= 1 ? 1 : q <= 2 ? 2 : q <= 5 ? 5 : 10) * mag, minStep)
      self.step = step
      let first = (lo / step + 1e-9).rounded(.down), last = max((hi / step - 1e-9).rounded(.up), first + 1)
      self.lo = first * step
      self.hi = last * step
      values = stride(from: first, through: last, by: 1).map { $0 * step }
    }

    func label(_ v: Double) -> String {
      let decimals = max(0, Int((-log10(step) - 1e-9).rounded(.up)))
      return String(format: "%.\(decimals)f", abs(v) < step * 1e-6 ? 0 : v)
    }
  }

  static func header(height: Double, title: String) -> String {
    var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(width))\" height=\"\(f(height))\""
    s += " viewBox=\"0 0 \(f(width)) \(f(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
    s += "<title>\(escape(title))</title>\n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n"
    return s + "<text x=\"\(f(width / 2))\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">\(escape(title))</text>\n"
  }

  static func noData(_ title: String) -> String {
    header(height: 200, title: title)
      + "<text x=\"\(f(width / 2))\" y=\"110\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n</svg>\n"
  }

  /// Grid lines, ticks and labels of a horizontal axis whose `lo` sits at `left`.
  static func xAxis(_ t: Ticks, scale: Double, top: Double, bottom: Double, label: String) -> String {
    var s = "<g class=\"x-axis\" font-size=\"11\">"
    for v in t.values {
      let x = left + (v - t.lo) * scale
      s += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(bottom + 4))\" stroke=\"#ccc\"/>"
      s += "<text x=\"\(f(x))\" y=\"\(f(bottom + 17))\" text-anchor=\"middle\">\(t.label(v))</text>"
    }
    s +=
      "<line x1=\"\(f(left))\" y1=\"\(f(bottom))\" x2=\"\(f(left + plotWidth))\" y2=\"\(f(bottom))\" stroke=\"#333\"/>"
    return s
      + "<text x=\"\(f(left + plotWidth / 2))\" y=\"\(f(bottom + 34))\" text-anchor=\"middle\">\(label)</text></g>\n"
  }

  /// Swatch and name of each model in a grid under the plot (long lists end with "+ N more").
  static func legendBlock(_ models: [String], colour: [String: Int], top: Double, eval: Bool) -> (String, Double) {
    let perRow = Int(plotWidth / legendColumn)
    var entries = models.prefix(legendMax).map { (label: $0, fill: palette[colour[$0]!]) }
    if models.count > legendMax { entries.append((label: "+ \(models.count - legendMax) more", fill: "none")) }
    if eval { entries.append((label: "eval (hatched)", fill: "url(#e7)")) }
    var s = "<g class=\"legend\">"
    for (i, e) in entries.enumerated() {
      let x = left + Double(i % perRow) * legendColumn, y = top + Double(i / perRow) * legendRow
      let name = e.label.count > 22 ? String(e.label.prefix(21)) + "…" : e.label
      s += "<g><title>\(escape(e.label))</title><rect x=\"\(f(x))\" y=\"\(f(y - 10))\" width=\"12\" height=\"12\""
      s += " fill=\"\(e.fill)\"/><text x=\"\(f(x + 17))\" y=\"\(f(y))\">\(escape(name))</text></g>"
    }
    let rows = (entries.count + perRow - 1) / perRow
    return (s + "</g>\n", Double(rows) * legendRow)
  }

  /// Text safe inside XML elements and attribute values.
  public static func escape(_ s: String) -> String {
    var out = ""
    out.reserveCapacity(s.utf8.count)
    for ch in s.unicodeScalars {
      switch ch {
      case "&": out += "&amp;"
      case "<": out += "&lt;"
      case ">": out += "&gt;"
      case "\"": out += "&quot;"
      case "'": out += "&apos;"
      default:
        // XML 1.0 forbids most control characters; keep tab and newline.
        if ch.value < 0x20 && ch != "\t" && ch != "\n" && ch != "\r" {
          out += " "
        } else {
          out.unicodeScalars.append(ch)
        }
      }
    }
    return out
  }

  /// `v` rounded to `digits` decimals, without trailing zeros ("12.5", "3", "-0.25").
  static func f(_ v: Double, _ digits: Int = 2) -> String {
    guard v.isFinite else { return "0" }
    let p = [1.0, 10, 100, 1000, 10000][min(max(digits, 0), 4)]
    let n = (abs(v) * p).rounded()
    guard n < 1e15 else { return String(v) }
    let whole = Int(n / p), frac = Int(n) - whole * Int(p)
    var s = (v < 0 && n > 0 ? "-" : "") + String(whole)
    if frac > 0 {
      var digitsText = String(frac)
      digitsText = String(repeating: "0", count: String(Int(p)).count - 1 - digitsText.count) + digitsText
      while digitsText.hasSuffix("0") { digitsText.removeLast() }
      s += "." + digitsText
    }
    return s
  }
}
