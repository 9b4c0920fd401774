package report

import (
	"bytes"
	_ "embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"io"
	"slices"
	"strings"

	"codeberg.org/go-fonts/liberation/liberationsansregular"
	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/extension"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// HTMLDocument is what report.html shows besides the report itself: where it came from.
type HTMLDocument struct {
	// Provenance are key/value facts of the run (tool version, target, Kubernetes, CPU model…), in display order.
	Provenance [][2]string
	// PlanYAML is the plan file as it was run.
	PlanYAML string
}

//go:embed report.html.tmpl
var htmlTemplateText string

var htmlTemplate = template.Must(template.New("report.html").Parse(htmlTemplateText))

// htmlFigure is one chart in report.html: an inline SVG (drawn by the same code as the chart files) and, for a
// timeline, the points that say more on hover.
type htmlFigure struct {
	ID, Caption string
	SVG         template.HTML
	Kind        string // requests, latency, timeline
	Run         string // the run's column name
	Failures    int    // failure dots drawn (timeline)
}

// WriteHTML writes report.html: one self-contained file (no script, style sheet, font or image from anywhere else)
// with the Markdown report's tables and sentences, the plan and its provenance, and every chart as inline SVG; the
// timeline's failure dots and lifecycle marks carry their details as SVG titles, which browsers show on hover
// without any JavaScript.
func WriteHTML(w io.Writer, rep Contents, lang string, doc HTMLDocument) error {
	var md bytes.Buffer
	if err := WriteMarkdown(&md, rep, lang); err != nil {
		return err
	}
	md.WriteString("\n")
	if err := WriteMarkdownLong(&md, rep, lang); err != nil {
		return err
	}
	var body bytes.Buffer
	if err := goldmark.New(goldmark.WithExtensions(extension.Table)).Convert(md.Bytes(), &body); err != nil {
		return fmt.Errorf("report.html: %w", err)
	}
	charts, err := reportCharts(rep)
	if err != nil {
		return err
	}
	var figures []htmlFigure
	for _, c := range charts {
		svg, err := inlineSVG(c.plot, chartWidth, c.height, c.timeline)
		if err != nil {
			return err
		}
		f := htmlFigure{ID: "sweep", Caption: c.plot.Title.Text, SVG: svg, Kind: c.kind}
		if c.run >= 0 {
			f.ID, f.Run = fmt.Sprintf("%s-%d", c.kind, c.run), column(rep.Runs[c.run])
		}
		if c.timeline != nil {
			for _, h := range c.timeline.hotspots {
				if h.Kind == "failure" {
					f.Failures++
				}
			}
		}
		figures = append(figures, f)
	}
	title := rep.Plan
	if rep.Description != "" {
		title += ": " + rep.Description
	}
	return htmlTemplate.Execute(w, map[string]any{
		"Lang":       lang,
		"Title":      title,
		"Report":     template.HTML(body.String()), // rendered from our own Markdown, whose cells are our figures
		"Figures":    figures,
		"Timelines":  slices.ContainsFunc(figures, func(f htmlFigure) bool { return f.Kind == "timeline" }),
		"Provenance": doc.Provenance,
		"PlanYAML":   doc.PlanYAML,
		"ChartFont":  chartFontFace(),
	})
}

// chartFontFace is the CSS that gives the page the charts' typeface from its own file: without it a browser draws
// the SVG charts' text in whatever sans serif it has, wider or narrower than the text was laid out for, and legends
// run past their chart.
func chartFontFace() template.CSS {
	return template.CSS(`@font-face { font-family: "Liberation Sans"; font-style: normal; font-weight: normal; src: url(data:font/ttf;base64,` +
		base64.StdEncoding.EncodeToString(liberationsansregular.TTF) + `) format("truetype"); }`)
}

// inlineSVG draws a chart as SVG for inclusion in HTML: without the XML prolog, scaled to its container, and with
// the timeline's hotspots (when tp is set) as transparent circles with titles over what was drawn.
func inlineSVG(p *plot.Plot, width, height vg.Length, tp *timelinePlotter) (template.HTML, error) {
	if tp != nil {
		tp.hotspots = nil
	}
	c, err := draw.NewFormattedCanvas(width, height, "svg")
	if err != nil {
		return "", err
	}
	data := drawFigure(draw.New(c), p)
	var out bytes.Buffer
	if _, err := c.WriteTo(&out); err != nil {
		return "", err
	}
	svg := out.String()
	if i := strings.Index(svg, "<svg"); i >= 0 {
		svg = svg[i:]
	}
	svg = strings.Replace(svg, "<svg ", `<svg preserveAspectRatio="xMinYMin meet" style="max-width:100%;height:auto" `, 1)
	if tp != nil && len(tp.hotspots) > 0 {
		xf, yf := p.Transforms(&data)
		var g strings.Builder
		g.WriteString(`<g class="hotspots">`)
		for _, h := range tp.hotspots {
			fmt.Fprintf(&g, `<circle class="%s" cx="%.2f" cy="%.2f" r="%.2f"><title>%s</title></circle>`,
				h.Kind, xf(h.X).Points(), (height - yf(h.Y)).Points(), max(h.Radius.Points(), 3)+1, template.HTMLEscapeString(h.Text))
		}
		g.WriteString("</g>\n")
		end := strings.LastIndex(svg, "</svg>")
		svg = svg[:end] + g.String() + svg[end:]
	}
	return template.HTML(svg), nil // gonum's SVG of our own data; every text in it escaped by vgsvg
}
