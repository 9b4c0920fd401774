package app

import (
	"strings"
	"unicode/utf8"
)

const cowBody = `        \   ^__^
         \  (oo)\_______
            (__)\       )\/\
                ||----w |
                ||     ||
`

const thinkingCowBody = `        o   ^__^
         o  (oo)\_______
            (__)\       )\/\
                ||----w |
                ||     ||
`

// maxBalloonWidth wraps long messages the way cowsay does (its default -W 40).
const maxBalloonWidth = 40

// Say renders a cow saying the message.
func Say(message string) string { return render(message, cowBody, sayBorders) }

// Think renders a cow thinking the message.
func Think(message string) string { return render(message, thinkingCowBody, thinkBorders) }

// balloonBorders are the left and right edges of a one-line balloon and of the first, middle and last lines of a longer one.
type balloonBorders struct{ single, first, middle, last [2]string }

var (
	sayBorders   = balloonBorders{[2]string{"<", ">"}, [2]string{"/", "\\"}, [2]string{"|", "|"}, [2]string{"\\", "/"}}
	thinkBorders = balloonBorders{[2]string{"(", ")"}, [2]string{"(", ")"}, [2]string{"(", ")"}, [2]string{"(", ")"}}
)

func render(message, body string, borders balloonBorders) string {
	lines := wrap(message, maxBalloonWidth)
	width := 0
	for _, l := range lines {
		width = max(width, utf8.RuneCountInString(l))
	}
	var b strings.Builder
	b.WriteString(" " + strings.Repeat("_", width+2) + "\n")
	for i, l := range lines {
		edge := borders.middle
		switch {
		case len(lines) == 1:
			edge = borders.single
		case i == 0:
			edge = borders.first
		case i == len(lines)-1:
			edge = borders.last
		}
		left, right := edge[0], edge[1]
		pad := strings.Repeat(" ", width-utf8.RuneCountInString(l))
		b.WriteString(left + " " + l + pad + " " + right + "\n")
	}
	b.WriteString(" " + strings.Repeat("-", width+2) + "\n")
	b.WriteString(body)
	return b.String()
}

func wrap(message string, width int) []string {
	var lines []string
	for _, paragraph := range strings.Split(message, "\n") {
		line := ""
		for _, word := range strings.Fields(paragraph) {
			for utf8.RuneCountInString(word) > width {
				if line != "" {
					lines = append(lines, line)
					line = ""
				}
				runes := []rune(word)
				lines = append(lines, string(runes[:width]))
				word = string(runes[width:])
			}
			switch {
			case line == "":
				line = word
			case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) <= width:
				line += " " + word
			default:
				lines = append(lines, line)
				line = word
			}
		}
		lines = append(lines, line)
	}
	return lines
}
