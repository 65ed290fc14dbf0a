package dashboard

import (
	"sort"
	"time"

	"github.com/sharespot/sharespot/internal/money"
)

// Chart is a bar chart the server draws as inline SVG: bars with their
// geometry worked out here, so the page needs no script to show it. The
// same numbers are in a table beside it, for screen readers and for
// anyone who would rather read.
type Chart struct {
	ID, Title string
	W, H      int
	// Bars are one column per day.
	Bars []Bar
	// Base is the columns' baseline.
	Base int
}

// Bar is one bar: its label, its value as shown, and where it is drawn.
type Bar struct {
	Label, Text    string
	Value          int64
	X, Y, BW, BH   int
	TX, TY, LX, LY int
}

const (
	chartW = 640
	chartH = 220
	pad    = 28
)

// dayCharts draws one chart per currency of value by day over the last
// Days days, days without sessions included.
func dayCharts(days []DayMoney, now time.Time, title string, value func(DayMoney) int64) []Chart {
	byCur := map[string]map[string]int64{}
	for _, d := range days {
		if byCur[d.Currency] == nil {
			byCur[d.Currency] = map[string]int64{}
		}
		byCur[d.Currency][d.Day] += value(d)
	}
	curs := make([]string, 0, len(byCur))
	for c := range byCur {
		curs = append(curs, c)
	}
	sort.Strings(curs)
	var out []Chart
	for _, cur := range curs {
		c := Chart{ID: "chart-day-" + cur, Title: title + " (" + cur + ")", W: chartW, H: chartH}
		today := now.UTC().Truncate(24 * time.Hour)
		for i := Days - 1; i >= 0; i-- {
			day := today.AddDate(0, 0, -i).Format("2006-01-02")
			v := byCur[cur][day]
			c.Bars = append(c.Bars, Bar{Label: day[5:], Text: money.Format(v, cur), Value: v})
		}
		layoutColumns(&c)
		out = append(out, c)
	}
	return out
}

func layoutColumns(c *Chart) {
	var top int64
	for _, b := range c.Bars {
		top = max(top, b.Value)
	}
	n := len(c.Bars)
	slot := (c.W - 2*pad) / n
	base := c.H - pad
	c.Base = base
	for i := range c.Bars {
		b := &c.Bars[i]
		h := 0
		if top > 0 && b.Value > 0 {
			h = max(1, int(int64(base-pad)*b.Value/top))
		}
		b.X, b.BW = pad+i*slot+slot/8, slot*3/4
		b.Y, b.BH = base-h, h
		b.TX, b.TY = b.X+b.BW/2, b.Y-4
		b.LX, b.LY = b.TX, base+16
		if b.Value == 0 {
			b.Text = ""
		}
	}
}
