import { bytes } from './api';
import type { Point } from './api-vms';

export interface Series {
  name: string;
  points: Point[];
  color: string;
  /** A value holds until the next point (drawn flat, then straight up or down). */
  step?: boolean;
}

/** The corners a step line passes through. */
function stepped(points: Point[]): Point[] {
  const out: Point[] = [];
  for (const p of points) {
    const last = out[out.length - 1];
    if (last && last[1] !== p[1]) out.push([p[0], last[1]]);
    out.push(p);
  }
  return out;
}

const W = 640;
const H = 220;
const PAD = { left: 70, right: 24, top: 10, bottom: 28 };
const COLORS = ['#2563eb', '#f59e0b', '#15803d', '#b91c1c', '#7c3aed', '#0891b2', '#be185d', '#4d7c0f'];

export const seriesColor = (i: number): string => COLORS[i % COLORS.length]!;

/** A round step for `ticks` ticks up to `max` bytes (powers of two, as the sizes are). */
function byteStep(max: number, ticks: number): number {
  let step = 1;
  while (step * ticks < max) step *= 2;
  return step;
}

function timeLabel(t: number, span: number): string {
  const d = new Date(t);
  return span > 2 * 86_400_000 ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' }) : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/**
 * A time chart of byte series in plain SVG: lines from point to point (the series bring their own
 * steps), a byte axis in powers of two, a time axis, and a legend. Empty series draw nothing.
 */
export function LineChart(props: { title: string; series: Series[]; from: number; to: number; testId: string }) {
  const all = props.series.flatMap((s) => s.points);
  const max = Math.max(1, ...all.map((p) => p[1]));
  const step = byteStep(max, 4);
  const top = step * Math.max(1, Math.ceil(max / step));
  const span = Math.max(1, props.to - props.from);
  const x = (t: number) => PAD.left + ((t - props.from) / span) * (W - PAD.left - PAD.right);
  const y = (v: number) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const yTicks: number[] = [];
  for (let v = 0; v <= top; v += step) yTicks.push(v);
  const xTicks = [0, 1, 2, 3, 4].map((i) => props.from + (span * i) / 4);
  return (
    <figure className="chart" data-testid={props.testId}>
      <figcaption>{props.title}</figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={props.title}>
        {yTicks.map((v) => (
          <g key={v}>
            <line x1={PAD.left} x2={W - PAD.right} y1={y(v)} y2={y(v)} className="grid" />
            <text x={PAD.left - 6} y={y(v) + 4} textAnchor="end" className="tick">
              {bytes(v)}
            </text>
          </g>
        ))}
        {xTicks.map((t, i) => (
          <text key={t} x={x(t)} y={H - 8} textAnchor={i === 0 ? 'start' : i === xTicks.length - 1 ? 'end' : 'middle'} className="tick">
            {timeLabel(t, span)}
          </text>
        ))}
        {props.series.map((s) =>
          s.points.length ? (
            <g key={s.name} data-testid="chart-series" data-series={s.name}>
              <polyline fill="none" stroke={s.color} strokeWidth={2} points={(s.step ? stepped(s.points) : s.points).map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ')} />
              {s.points.length < 60 && s.points.map((p, i) => <circle key={i} cx={x(p[0])} cy={y(p[1])} r={2.5} fill={s.color} />)}
            </g>
          ) : null,
        )}
      </svg>
      <div className="legend small">
        {props.series.map((s) => (
          <span key={s.name}>
            <i style={{ background: s.color }} /> {s.name}
          </span>
        ))}
      </div>
    </figure>
  );
}
