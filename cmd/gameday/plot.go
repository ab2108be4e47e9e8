package main

import (
	"fmt"
	"image/color"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The figure: four panels stacked over one time axis, their legends in a
// strip on the right so that no legend covers the lines.
const (
	figureWidth  = 10 * vg.Inch
	figureHeight = 13 * vg.Inch
	titleHeight  = 0.45 * vg.Inch
	legendWidth  = 2.4 * vg.Inch
	legendGap    = 0.15 * vg.Inch
	panelGap     = 0.2 * vg.Inch
	// headroom leaves the top of each panel to the event numbers.
	headroom = 1.15
)

// panel is one plot of the figure with the legend drawn beside it.
type panel struct {
	plot   *plot.Plot
	legend plot.Legend
}

// series is one line of a panel: its name in the legend, its colour, and
// its value in a bucket of the timeline, NaN where it has none.
type series struct {
	name  string
	color color.Color
	value func(Point) float64
}

// plotRun draws r's timeline as a PNG at path: requests per second by
// outcome, latency against the SLO, and the protections' own signals,
// stacked over the seconds since the start of the run, with the fault
// window shaded and the events marked and numbered. A run without points
// still gets a figure, whose title says so.
func plotRun(r *Run, path string) error {
	img := vgimg.New(figureWidth, figureHeight)
	drawFigure(draw.New(img), figureTitle(r), runPanels(r))
	return writePNG(path, img)
}

// figureTitle names the run, and says when there is nothing to show.
func figureTitle(r *Run) string {
	title := r.Title + " — " + r.Variant
	if len(r.Timeline) == 0 {
		title += " (no samples recorded)"
	}
	return title
}

// runPanels builds the four panels over the same time axis.
func runPanels(r *Run) []panel {
	end := timelineEnd(r)
	rates := newPanel(r, "Requests per second by outcome", "requests/s", true)
	rates.add(r.Timeline, outcomeSeries(r))
	latency := newPanel(r, "Latency", "ms", false)
	latency.add(r.Timeline, latencySeries())
	latency.addSLO(r.SLO.P99, end)
	protections := newPanel(r, "Protections at work", "per second", false)
	protections.add(r.Timeline, protectionSeries())
	states := newPanel(r, "Breakers and readiness", "instances", false)
	states.add(r.Timeline, stateSeries())
	states.plot.X.Label.Text = "seconds from run start"

	panels := []panel{rates, latency, protections, states}
	for _, p := range panels {
		fitAxes(p.plot, end)
	}
	return panels
}

// timelineEnd is where the time axis stops: the end of the run or of its
// last bucket, whichever is later, and never zero.
func timelineEnd(r *Run) float64 {
	end := r.End
	if n := len(r.Timeline); n > 0 {
		end = max(end, r.Timeline[n-1].At+Step)
	}
	if end <= 0 {
		end = Step
	}
	return end.Seconds()
}

// newPanel starts a panel with the fault window shaded and the events
// marked; the panel that numbers the events also explains the marks in
// its legend.
func newPanel(r *Run, title, unit string, numbered bool) panel {
	p := panel{plot: plot.New(), legend: plot.NewLegend()}
	p.plot.Title.Text = title
	p.plot.Y.Label.Text = unit
	p.legend.Top, p.legend.Left = true, true
	p.legend.TextStyle.Font.Size = vg.Points(9)
	p.legend.Padding = vg.Points(2)

	window := faultWindow{from: r.FaultStart.Seconds(), to: r.FaultEnd.Seconds()}
	marks := eventMarks{numbered: numbered}
	for _, e := range r.Events {
		marks.at = append(marks.at, e.At.Seconds())
	}
	p.plot.Add(window, marks)
	if numbered && r.FaultEnd > r.FaultStart {
		p.legend.Add("fault window", window)
	}
	if numbered && len(r.Events) > 0 {
		p.legend.Add("event (numbered)", marks)
	}
	return p
}

// add draws each series that has a value somewhere on the timeline.
func (p *panel) add(timeline []Point, ss []series) {
	for _, s := range ss {
		style := draw.LineStyle{Color: s.color, Width: vg.Points(1.5)}
		var first *plotter.Line
		for _, xys := range segments(timeline, s.value) {
			line := &plotter.Line{XYs: xys, LineStyle: style}
			p.plot.Add(line)
			if first == nil {
				first = line
			}
		}
		if first != nil {
			p.legend.Add(s.name, first)
		}
	}
}

// addSLO draws the objective's p99 bound as a dashed horizontal line.
func (p *panel) addSLO(p99 time.Duration, end float64) {
	if p99 <= 0 {
		return
	}
	y := inMillis(p99)
	line := &plotter.Line{
		XYs: plotter.XYs{{X: 0, Y: y}, {X: end, Y: y}},
		LineStyle: draw.LineStyle{
			Color:  color.Black,
			Width:  vg.Points(1),
			Dashes: []vg.Length{vg.Points(6), vg.Points(3)},
		},
	}
	p.plot.Add(line)
	p.legend.Add("SLO p99", line)
}

// segments turns a series into lines over the seconds from the start of
// the run, broken where the series has no finite value, so that a gap
// shows as a gap rather than as a line drawn across it.
func segments(timeline []Point, value func(Point) float64) []plotter.XYs {
	var lines []plotter.XYs
	var cur plotter.XYs
	for _, pt := range timeline {
		y := value(pt)
		if math.IsNaN(y) || math.IsInf(y, 0) {
			if len(cur) > 0 {
				lines = append(lines, cur)
			}
			cur = nil
			continue
		}
		cur = append(cur, plotter.XY{X: pt.At.Seconds(), Y: y})
	}
	if len(cur) > 0 {
		lines = append(lines, cur)
	}
	return lines
}

// fitAxes sets the shared time axis, and a y axis from zero (every series
// is a rate, a count or a duration) to a little above the highest line.
// The range stays finite and non-empty, which the axis ticks need: a
// panel with nothing to draw gets a unit range.
func fitAxes(p *plot.Plot, end float64) {
	p.X.Min, p.X.Max = 0, end
	p.Y.Min = 0
	if !(p.Y.Max > 0) {
		p.Y.Max = 1
	}
	p.Y.Max = math.Min(p.Y.Max*headroom, math.MaxFloat64)
}

// outcomeSeries is one line per outcome present on the timeline: the
// known outcomes in their fixed order and colour, then any other by name.
func outcomeSeries(r *Run) []series {
	present := map[string]bool{}
	for _, pt := range r.Timeline {
		for k := range pt.Rates {
			present[k] = true
		}
	}
	var ss []series
	for _, s := range knownOutcomes() {
		if present[s.name] {
			ss = append(ss, s)
			delete(present, s.name)
		}
	}
	for i, k := range slices.Sorted(maps.Keys(present)) {
		ss = append(ss, rateSeries(k, plotutil.Color(i)))
	}
	return ss
}

// knownOutcomes are the outcomes of Point.Rates in the order the figure
// shows them: successes in cool colours, refusals in warm ones, failures
// in red and black.
func knownOutcomes() []series {
	return []series{
		rateSeries("201", rgb(0x1b9e3e)),
		rateSeries("200", rgb(0x1f77b4)),
		rateSeries("202", rgb(0x17becf)),
		rateSeries("4xx", rgb(0x9467bd)),
		rateSeries("429", rgb(0xe377c2)),
		rateSeries("503", rgb(0xff9f1c)),
		rateSeries("5xx", rgb(0xd62728)),
		rateSeries("no answer", rgb(0x000000)),
	}
}

// rateSeries is the requests per second of one outcome.
func rateSeries(outcome string, c color.Color) series {
	return series{
		name:  outcome,
		color: c,
		value: func(p Point) float64 { return p.Rates[outcome] },
	}
}

// latencySeries is p50 and p99 in milliseconds; a bucket with no answered
// request has no latency, and its gap is left visible.
func latencySeries() []series {
	quantile := func(d time.Duration) float64 {
		if d <= 0 {
			return math.NaN()
		}
		return inMillis(d)
	}
	return []series{
		{name: "p50", color: rgb(0x1f77b4), value: func(p Point) float64 { return quantile(p.P50) }},
		{name: "p99", color: rgb(0xd62728), value: func(p Point) float64 { return quantile(p.P99) }},
	}
}

// protectionSeries is what the protections report about themselves.
func protectionSeries() []series {
	return []series{
		{name: "retries/s", color: rgb(0xff9f1c), value: func(p Point) float64 { return p.Retries }},
		{name: "rejections/s", color: rgb(0x9467bd), value: func(p Point) float64 { return p.Rejections }},
		{name: "Postgres pool wait (ms/s)", color: rgb(0x8c564b), value: func(p Point) float64 { return inMillis(p.PoolWait) }},
	}
}

// stateSeries are the counts of instances in each state, on a scale of
// their own: beside rates in the hundreds they would lie flat.
func stateSeries() []series {
	return []series{
		{name: "provider breakers open", color: rgb(0xd62728), value: func(p Point) float64 { return p.BreakerOpen }},
		{name: "instances ready", color: rgb(0x1b9e3e), value: func(p Point) float64 { return float64(p.ReadyReplicas) }},
		{name: "instances degraded", color: rgb(0x7f7f7f), value: func(p Point) float64 { return float64(p.Degraded) }},
	}
}

// rgb is the opaque colour written 0xRRGGBB.
func rgb(hex uint32) color.RGBA {
	return color.RGBA{R: uint8(hex >> 16), G: uint8(hex >> 8), B: uint8(hex), A: 0xff}
}

// inMillis is d in milliseconds, fractions kept.
func inMillis(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}

// drawFigure draws the title and the panels, aligned so that their time
// axes line up, each with its legend to its right.
func drawFigure(c draw.Canvas, title string, panels []panel) {
	area := draw.Crop(c, 0, -legendWidth, 0, -titleHeight)

	titleStyle := panels[0].plot.Title.TextStyle
	titleStyle.Font.Size = vg.Points(15)
	c.FillText(titleStyle, vg.Point{X: area.Center().X, Y: c.Max.Y - vg.Points(6)}, title)

	rows := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		rows[i] = []*plot.Plot{p.plot}
	}
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadY: panelGap, PadBottom: vg.Points(4)}
	for i, tile := range plot.Align(rows, tiles, area) {
		p := panels[i]
		p.plot.Draw(tile[0])
		data := p.plot.DataCanvas(tile[0])
		p.legend.Draw(draw.Canvas{Canvas: c.Canvas, Rectangle: vg.Rectangle{
			Min: vg.Point{X: area.Max.X + legendGap, Y: data.Min.Y},
			Max: vg.Point{X: c.Max.X, Y: data.Max.Y},
		}})
	}
}

// writePNG writes img as a PNG file at path, replacing any file there.
func writePNG(path string, img *vgimg.Canvas) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return fmt.Errorf("encode png: %w", err)
	}
	return nil
}

// faultWindow shades the fault window over the full height of a panel.
// It reads the panel's canvas when drawn, so the shade spans whatever
// range the y axis ends up with.
type faultWindow struct{ from, to float64 } // seconds

// Plot implements plot.Plotter.
func (w faultWindow) Plot(c draw.Canvas, p *plot.Plot) {
	x, _ := p.Transforms(&c)
	left, right := max(x(w.from), c.Min.X), min(x(w.to), c.Max.X)
	if right <= left {
		return
	}
	c.FillPolygon(w.shade(), []vg.Point{
		{X: left, Y: c.Min.Y}, {X: left, Y: c.Max.Y},
		{X: right, Y: c.Max.Y}, {X: right, Y: c.Min.Y},
	})
}

// Thumbnail implements plot.Thumbnailer, for the legend.
func (w faultWindow) Thumbnail(c *draw.Canvas) {
	c.FillPolygon(w.shade(), []vg.Point{
		c.Min, {X: c.Min.X, Y: c.Max.Y}, c.Max, {X: c.Max.X, Y: c.Min.Y},
	})
}

// shade is light enough for the lines to read through it.
func (faultWindow) shade() color.Color {
	return color.NRGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0x26}
}

// eventMarks draws a thin dotted vertical line at each event and, when
// numbered, the event's number at the top, as the report lists them.
// Numbers are staggered over three heights so that close events stay
// legible.
type eventMarks struct {
	at       []float64 // seconds
	numbered bool
}

// Plot implements plot.Plotter.
func (m eventMarks) Plot(c draw.Canvas, p *plot.Plot) {
	x, _ := p.Transforms(&c)
	label := p.X.Tick.Label
	label.Font.Size = vg.Points(8)
	label.XAlign, label.YAlign = draw.XLeft, draw.YTop
	for i, at := range m.at {
		xi := x(at)
		if !c.ContainsX(xi) {
			continue
		}
		c.StrokeLine2(m.style(), xi, c.Min.Y, xi, c.Max.Y)
		if m.numbered {
			y := c.Max.Y - vg.Length(i%3)*vg.Points(9)
			c.FillText(label, vg.Point{X: xi + vg.Points(2), Y: y}, strconv.Itoa(i+1))
		}
	}
}

// Thumbnail implements plot.Thumbnailer, for the legend.
func (m eventMarks) Thumbnail(c *draw.Canvas) {
	x := c.Center().X
	c.StrokeLine2(m.style(), x, c.Min.Y, x, c.Max.Y)
}

// style is thin and dotted so that the marks stay behind the data.
func (eventMarks) style() draw.LineStyle {
	return draw.LineStyle{
		Color:  color.Gray{Y: 0x50},
		Width:  vg.Points(0.75),
		Dashes: []vg.Length{vg.Points(1), vg.Points(2)},
	}
}
