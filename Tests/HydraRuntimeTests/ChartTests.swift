import Foundation
import XCTest

@testable import HydraRuntime

#if canImport(FoundationXML)
  import FoundationXML
#endif

/// `schedule.svg` and `loss.svg`: well-formed XML, the right shapes in the right places.
final class ChartTests: XCTestCase {
  /// An element of a parsed SVG.
  final class Node {
    let name: String
    let attributes: [String: String]
    var children: [Node] = []
    var text = ""
    init(_ name: String, _ attributes: [String: String]) { self.name = name; self.attributes = attributes }

    func all(_ name: String) -> [Node] { (self.name == name ? [self] : []) + children.flatMap { $0.all(name) } }
    func group(_ cls: String) -> Node? { all("g").first { $0.attributes["class"] == cls } }
    func number(_ key: String) -> Double { Double(attributes[key] ?? "") ?? .nan }
    var title: String? { children.first { $0.name == "title" }?.text }
  }

  final class TreeBuilder: NSObject, XMLParserDelegate {
    var stack: [Node] = [Node("#document", [:])]
    func parser(
      _ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
      attributes: [String: String] = [:]
    ) {
      let node = Node(name, attributes)
      stack.last!.children.append(node)
      stack.append(node)
    }
    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
      stack.removeLast()
    }
    func parser(_ parser: XMLParser, foundCharacters string: String) { stack.last!.text += string }
  }

  /// Parses `svg`, failing the test when it is not well-formed; returns the `<svg>` element.
  func parse(_ svg: String, file: StaticString = #filePath, line: UInt = #line) throws -> Node {
    let parser = XMLParser(data: Data(svg.utf8))
    let builder = TreeBuilder()
    parser.delegate = builder
    let ok = parser.parse()
    XCTAssertTrue(ok, "not well-formed: \(String(describing: parser.parserError))", file: file, line: line)
    let root = try XCTUnwrap(builder.stack.first?.children.first, file: file, line: line)
    XCTAssertEqual(root.name, "svg", file: file, line: line)
    return root
  }

  /// Every shape lies inside the viewBox.
  func assertInside(_ svg: Node, file: StaticString = #filePath, line: UInt = #line) {
    let box = (svg.attributes["viewBox"] ?? "").split(separator: " ").compactMap { Double($0) }
    XCTAssertEqual(box.count, 4, file: file, line: line)
    guard box.count == 4 else { return }
    let (w, h) = (box[2], box[3])
    func check(_ x: Double, _ y: Double, _ what: String) {
      XCTAssert(
        x.isFinite && y.isFinite && x >= 0 && x <= w && y >= 0 && y <= h, "\(what) at \(x),\(y) outside \(w)x\(h)",
        file: file, line: line)
    }
    for r in svg.all("rect") where r.attributes["width"] != "100%" && r.attributes["x"] != nil {
      check(r.number("x"), r.number("y"), "rect")
      check(r.number("x") + r.number("width"), r.number("y") + r.number("height"), "rect end")
    }
    for c in svg.all("circle") { check(c.number("cx"), c.number("cy"), "circle") }
    for l in svg.all("line") {
      check(l.number("x1"), l.number("y1"), "line"); check(l.number("x2"), l.number("y2"), "line")
    }
    for p in svg.all("polyline") {
      for pair in (p.attributes["points"] ?? "").split(separator: " ") {
        let xy = pair.split(separator: ",").compactMap { Double($0) }
        XCTAssertEqual(xy.count, 2, file: file, line: line)
        if xy.count == 2 { check(xy[0], xy[1], "polyline point") }
      }
    }
  }

  func event(_ device: Int, _ model: String, _ name: String, step: Int, _ start: Double, _ end: Double) -> TraceEvent {
    TraceEvent(device: device, model: model, name: name, step: step, start: start, end: end)
  }

  // MARK: - schedule

  func testScheduleBoxesSitWhereTheScaleSays() throws {
    // Ends at 10 s: ticks 0, 2, ..., 10, so the 800-pixel plot is 80 pixels a second from x = 80.
    let events = [
      event(0, "m0", "s0 fwd", step: 1, 0, 1),
      event(0, "m1", "s2 bwd", step: 4, 2, 5),
      event(1, "m0", "eval", step: 1, 6, 10),
    ]
    let svg = try parse(Charts.schedule(events, devices: 2, title: "sched"))
    assertInside(svg)
    let rects = try XCTUnwrap(svg.group("events")).all("rect")
    XCTAssertEqual(rects.count, 3)
    let expected: [(x: Double, width: Double, y: Double, fill: String)] = [
      (80, 80, 47, Charts.palette[0]), (240, 240, 47, Charts.palette[1]), (560, 320, 77, "url(#e0)"),
    ]
    for (r, e) in zip(rects, expected) {
      XCTAssertEqual(r.number("x"), e.x, accuracy: 0.01)
      XCTAssertEqual(r.number("width"), e.width, accuracy: 0.01)
      XCTAssertEqual(r.number("y"), e.y, accuracy: 0.01)
      XCTAssertEqual(r.attributes["fill"], e.fill)
    }
    XCTAssertEqual(rects[1].title, "m1 s2 bwd, step 4\nstart 2 s, duration 3 s")
    XCTAssertEqual(rects[2].title, "m0 eval, step 1\nstart 6 s, duration 4 s")
    let labels = svg.all("text").map(\.text)
    XCTAssert(labels.contains("device 0") && labels.contains("device 1"))
    XCTAssertEqual(
      try XCTUnwrap(svg.group("x-axis")).all("text").map(\.text), ["0", "2", "4", "6", "8", "10", "time (s)"])
    let legend = try XCTUnwrap(svg.group("legend")).all("text").map(\.text)
    XCTAssertEqual(legend, ["m0", "m1", "eval (hatched)"])
  }

  func testScheduleMergesBoxesLessThanAPixelApart() throws {
    var events: [TraceEvent] = []
    // Device 0: 1000 back-to-back tasks of one model (gaps of a microsecond): one box.
    for i in 0..<1000 {
      events.append(
        event(0, "a", i % 2 == 0 ? "s0 fwd" : "s0 bwd", step: i / 2, Double(i) * 0.01 + 1e-6, Double(i + 1) * 0.01))
    }
    // Device 1: ten tasks a second apart (80 pixels): ten boxes.
    for i in 0..<10 { events.append(event(1, "b", "s0 fwd", step: i, Double(i), Double(i) + 0.5)) }
    // Device 2: the same model, but an eval in between: three boxes.
    events += [
      event(2, "a", "s0 fwd", step: 0, 0, 1), event(2, "a", "eval", step: 0, 1, 2),
      event(2, "a", "s0 fwd", step: 1, 2, 3),
    ]
    let svg = try parse(Charts.schedule(events, devices: 3, title: "merge"))
    assertInside(svg)
    let rects = try XCTUnwrap(svg.group("events")).all("rect")
    XCTAssertEqual(rects.count, 1 + 10 + 3)
    XCTAssertEqual(rects[0].title, "a: 1000 tasks, steps 0–499\nstart 0 s, duration 10 s")
    XCTAssertEqual(rects[0].number("width"), 800, accuracy: 0.01)
  }

  func testScheduleOfHundredThousandEventsStaysSmall() throws {
    // Sequential: each of 4 devices trains models one after another, 25,000 tasks each.
    var sequential: [TraceEvent] = []
    for d in 0..<4 {
      for i in 0..<25_000 {
        sequential.append(
          event(d, "m\(d * 10 + i / 2500)", "s\(i % 4) fwd", step: i / 8, Double(i) * 0.002, Double(i) * 0.002 + 0.0019)
        )
      }
    }
    // Interleaved: two models alternating on one device, every task far under a pixel.
    var interleaved: [TraceEvent] = []
    for i in 0..<100_000 {
      let t = Double(i) * 1e-3
      interleaved.append(event(0, i % 2 == 0 ? "x" : "y", i % 10 == 9 ? "eval" : "s0 fwd", step: i, t, t + 9e-4))
    }
    // Worst case: 64 devices, 50 models round-robin, back to back, each task just over half a
    // pixel wide, so neither merging rule applies until the box budget coarsens the pixel.
    var crowded: [TraceEvent] = []
    let perLane = 100_000 / 64, width = 100.0 / Double(perLane)
    for d in 0..<64 {
      for i in 0..<perLane {
        let t = Double(i) * width
        crowded.append(event(d, "m\((d + i) % 50)", "s1 bwd", step: i, t, t + width))
      }
    }
    for events in [sequential, interleaved, crowded] {
      let text = Charts.schedule(events, devices: 4, title: "big")
      XCTAssertLessThan(text.utf8.count, 2_000_000)
      let svg = try parse(text)
      assertInside(svg)
      let rects = try XCTUnwrap(svg.group("events")).all("rect").count
      XCTAssert(rects > 0 && rects <= Charts.boxBudget, "\(rects) boxes")
    }
  }

  func testScheduleEscapesNamesAndShowsEmptyRuns() throws {
    let model = "a&b<c>\"d'", title = "<T & \"x\">"
    let svg = try parse(Charts.schedule([event(0, model, "s0 fwd", step: 0, 0, 1)], devices: 1, title: title))
    XCTAssertEqual(svg.title, title)
    XCTAssertEqual(
      try XCTUnwrap(svg.group("events")).all("rect").first?.title, "\(model) s0 fwd, step 0\nstart 0 s, duration 1 s")
    XCTAssert(try XCTUnwrap(svg.group("legend")).all("text").map(\.text).contains(model))
    let empty = try parse(Charts.schedule([], devices: 2, title: title))
    XCTAssert(empty.all("text").map(\.text).contains("no data"))
  }

  // MARK: - loss

  func testLossLinesSitWhereTheScaleSays() throws {
    // Steps 0...100 (ticks of 20: 8 px a step from x = 80); losses 1...2 (ticks of 0.2: 400 px per
    // unit, 2.0 at the top y = 44, 1.0 at the bottom y = 444).
    let series: [(model: String, points: [(step: Int, loss: Double)])] = [
      (model: "a", points: [(step: 0, loss: 2.0), (step: 100, loss: 1.0)]),
      (model: "b", points: [(step: 0, loss: 1.5), (step: 50, loss: 1.25), (step: 100, loss: .nan)]),
      (model: "c", points: [(step: 0, loss: 1.8), (step: 50, loss: .infinity)]),
    ]
    let svg = try parse(Charts.loss(series, title: "loss", yLabel: "validation loss"))
    assertInside(svg)
    let lines = try XCTUnwrap(svg.group("series")).all("polyline")
    XCTAssertEqual(lines.count, 3)
    XCTAssertEqual(lines.map { $0.attributes["points"] }, ["80,44 880,444", "80,244 480,344", "80,124"])
    XCTAssertEqual(lines.map { $0.attributes["stroke"] }, Array(Charts.palette.prefix(3)))
    XCTAssertEqual(try XCTUnwrap(svg.group("series")).all("circle").count, 2 + 2 + 1)
    XCTAssertEqual(
      try XCTUnwrap(svg.group("x-axis")).all("text").map(\.text), ["0", "20", "40", "60", "80", "100", "step"])
    XCTAssertEqual(
      try XCTUnwrap(svg.group("y-axis")).all("text").map(\.text),
      ["1.0", "1.2", "1.4", "1.6", "1.8", "2.0", "validation loss"])
    XCTAssertEqual(try XCTUnwrap(svg.group("legend")).all("text").map(\.text), ["a", "b", "c"])
  }

  func testTrainingLinesHaveAPointPerRowAndEndWhereTheirModelStopped() throws {
    // a trains 100 steps, b stops early after 60, c diverges at 30 (its last loss is not finite);
    // evaluations every 20 steps. Steps 0...100 (ticks of 20: 8 px a step from x = 80); losses
    // 2...3 (ticks of 0.2: 400 px per unit, 2.0 at the bottom y = 444).
    let training: [(model: String, points: [(step: Int, loss: Double)])] = [
      (model: "a", points: (1...100).map { (step: $0, loss: 3 - Double($0) * 0.01) }),
      (model: "b", points: (1...60).map { (step: $0, loss: 2.5) }),
      (model: "c", points: (1...30).map { (step: $0, loss: $0 == 30 ? .nan : 2.25) }),
    ]
    let validation: [(model: String, points: [(step: Int, loss: Double)])] = [
      (model: "a", points: stride(from: 20, through: 100, by: 20).map { (step: $0, loss: 2.0) }),
      (model: "b", points: stride(from: 20, through: 60, by: 20).map { (step: $0, loss: 2.2) }),
      (model: "c", points: [(step: 20, loss: 2.3)]),
    ]
    let svg = try parse(Charts.loss(validation, training: training, title: "t", yLabel: "loss"))
    assertInside(svg)
    let series = try XCTUnwrap(svg.group("series"))
    let lines = series.all("polyline").filter { $0.attributes["class"] == "train" }
    let points = lines.map { ($0.attributes["points"] ?? "").split(separator: " ").map(String.init) }
    XCTAssertEqual(points.map(\.count), [100, 60, 29])
    // Each line ends at its model's last finite step: x = 80 + 8 * step.
    XCTAssertEqual(points.map { $0.last?.split(separator: ",").first }, ["880", "560", "312"])
    // A constant loss stays put under smoothing: 2.5 at y = 444 - 0.5 * 400.
    XCTAssertEqual(points[1].last, "560,244")
    // a's second point is smoothed (span 100 / 50 = 2 steps, alpha 2/3): 2.99 + 2/3 (2.98 - 2.99)
    // = 2.98333, at y = 444 - 0.98333 * 400; the raw 2.98 would sit at 52.
    XCTAssertEqual(points[0][1], "96,50.67")
    XCTAssertEqual(series.all("circle").count, 5 + 3 + 1)
    XCTAssertEqual(
      series.all("polyline").filter { $0.attributes["class"] == "val" }.map { $0.attributes["stroke-dasharray"] },
      ["4 3", "4 3", "4 3"])
    XCTAssertTrue(svg.all("text").contains { $0.attributes["class"] == "key" && $0.text.contains("span 2 steps") })
    XCTAssertEqual(try XCTUnwrap(svg.group("legend")).all("text").map(\.text), ["a", "b", "c"])
  }

  func testLongTrainingLinesAreThinnedButStillEndAtTheLastStep() throws {
    let training = [(model: "long", points: (1...5000).map { (step: $0, loss: 1 / Double($0)) })]
    let svg = try parse(Charts.loss([], training: training, title: "t", yLabel: "loss"))
    let line = try XCTUnwrap(svg.all("polyline").first { $0.attributes["class"] == "train" })
    let points = (line.attributes["points"] ?? "").split(separator: " ")
    // Every 4th of 5000 points (the fewest that fit in 1600) and the last: 1250 + 1.
    XCTAssertEqual(Charts.linePoints, 1600)
    XCTAssertEqual(points.count, 1251)
    // Steps 0...5000: the last step at the right edge of the plot.
    XCTAssertEqual(points.last?.split(separator: ",").first, "880")
    XCTAssertEqual(Charts.smoothingSpan(rows: 5000), 100)
    XCTAssertEqual(Charts.smoothingSpan(rows: 30), 1)
  }

  func testLossDegenerateInputs() throws {
    let cases: [[(model: String, points: [(step: Int, loss: Double)])]] = [
      [(model: "one", points: [(step: 7, loss: 3.25)])],
      [(model: "flat", points: [(step: 0, loss: 2), (step: 10, loss: 2), (step: 20, loss: 2)])],
      [(model: "zero", points: [(step: 5, loss: 0), (step: 5, loss: 0)])],
      [(model: "neg", points: [(step: -3, loss: -1e-7), (step: 1_000_000, loss: 1e6)])],
    ]
    for series in cases {
      let text = Charts.loss(series, title: "t", yLabel: "loss")
      XCTAssertFalse(text.lowercased().contains("nan") || text.contains("inf"), text)
      let svg = try parse(text)
      assertInside(svg)
      XCTAssertEqual(try XCTUnwrap(svg.group("series")).all("polyline").count, 1)
      // Steps are whole numbers, and so are the step ticks.
      XCTAssert(try XCTUnwrap(svg.group("x-axis")).all("text").dropLast().allSatisfy { Int($0.text) != nil })
    }
    for series in [[], [(model: "gone", points: [(step: 1, loss: Double.nan)])]]
      as [[(model: String, points: [(step: Int, loss: Double)])]]
    {
      let svg = try parse(Charts.loss(series, title: "empty & <nothing>", yLabel: "loss"))
      XCTAssertEqual(svg.title, "empty & <nothing>")
      XCTAssert(svg.all("text").map(\.text).contains("no data"))
      XCTAssertTrue(svg.all("polyline").isEmpty)
    }
  }

  func testLossEscapesAndColoursMatchTheSchedule() throws {
    let models = (0..<14).map { "m\($0 < 10 ? "0" : "")\($0) \"&<>\"" }
    let series = models.reversed().map { (model: $0, points: [(step: 1, loss: 1.0), (step: 2, loss: 0.5)]) }
    let svg = try parse(Charts.loss(series, title: "x", yLabel: "<y>"))
    let groups = try XCTUnwrap(svg.group("series")).children
    XCTAssertEqual(groups.map(\.title), models.reversed())
    // Colour by rank among the sorted ids, cycling after twelve, as in the schedule.
    let strokes = groups.map { $0.all("polyline").first?.attributes["stroke"] }
    XCTAssertEqual(strokes, models.indices.reversed().map { Charts.palette[$0 % 12] })
    let sched = try parse(
      Charts.schedule(
        models.enumerated().map { event(0, $1, "s0 fwd", step: 0, Double($0), Double($0) + 1) }, devices: 1, title: "s")
    )
    XCTAssertEqual(
      try XCTUnwrap(sched.group("events")).all("rect").map { $0.attributes["fill"] },
      models.indices.map { Charts.palette[$0 % 12] })
  }

  func testTicksAreRoundNumbers() {
    let t = Charts.Ticks(0, 10)
    XCTAssertEqual(t.values, [0, 2, 4, 6, 8, 10])
    let small = Charts.Ticks(0, 0.37)
    XCTAssertEqual(small.values.map(small.label), ["0.0", "0.1", "0.2", "0.3", "0.4"])
    let mid = Charts.Ticks(1.13, 4.9)
    XCTAssertEqual(mid.values.map(mid.label), ["1", "2", "3", "4", "5"])
    let big = Charts.Ticks(0, 123_456)
    XCTAssertEqual(big.values.map(big.label), ["0", "50000", "100000", "150000"])
    let steps = Charts.Ticks(2, 4, minStep: 1)
    XCTAssertEqual(steps.values.map(steps.label), ["2", "3", "4"])
    XCTAssertEqual(Charts.f(12.5), "12.5")
    XCTAssertEqual(Charts.f(-0.004), "0")
    XCTAssertEqual(Charts.f(-0.25), "-0.25")
    XCTAssertEqual(Charts.f(3.05, 3), "3.05")
    XCTAssertEqual(Charts.f(0.0006, 3), "0.001")
  }

  /// trace.json is written by hand: Foundation's JSON parser reads back every field, with model
  /// names that need escaping and times rounded to whole microseconds.
  func testTraceIsJSONWithEscapedNames() throws {
    let folder = NSTemporaryDirectory() + "hydra-trace-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let output = try OutputFolder(path: folder, resolvedJob: "")
    let odd = "a\"b\\c\nd\u{1}é"
    try output.writeTrace(
      [
        TraceEvent(device: 1, model: odd, name: "s0 fwd", step: 3, start: 0.0000014, end: 0.25),
        TraceEvent(device: 0, model: "m001", name: "eval", step: 7, start: 1.5, end: 1.5000026),
      ], devices: 2)
    let data = try Data(contentsOf: URL(fileURLWithPath: folder + "/trace.json"))
    let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    XCTAssertEqual(root["displayTimeUnit"] as? String, "ms")
    let events = try XCTUnwrap(root["traceEvents"] as? [[String: Any]])
    XCTAssertEqual(events.count, 4)
    XCTAssertEqual((events[1]["args"] as? [String: Any])?["name"] as? String, "device 1")
    let first = events[2]
    XCTAssertEqual(first["name"] as? String, odd + " s0 fwd")
    XCTAssertEqual((first["args"] as? [String: Any])?["model"] as? String, odd)
    XCTAssertEqual((first["args"] as? [String: Any])?["step"] as? Int, 3)
    XCTAssertEqual(first["cat"] as? String, "shard")
    XCTAssertEqual(first["tid"] as? Int, 1)
    XCTAssertEqual(first["ts"] as? Int, 1)  // 1.4 us
    XCTAssertEqual(first["dur"] as? Int, 250_000 - 1)
    XCTAssertEqual(events[3]["cat"] as? String, "eval")
    XCTAssertEqual(events[3]["ts"] as? Int, 1_500_000)
    XCTAssertEqual(events[3]["dur"] as? Int, 3)  // 1500002.6 rounds to 1500003
  }
}
