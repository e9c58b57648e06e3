//! The conditions of Argo analysis metrics (`successCondition`, `failureCondition`): the subset
//! of Argo's expression language that templates use, parsed when a template is read (so a bad
//! condition is refused before a release depends on it) and evaluated against each measurement.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr    := and ( ("||" | "or") and )*
//! and     := not ( ("&&" | "and") not )*
//! not     := ("!" | "not") not | cmp
//! cmp     := sum ( ("==" | "!=" | "<" | "<=" | ">" | ">=") sum )?
//! sum     := prod ( ("+" | "-") prod )*
//! prod    := unary ( ("*" | "/" | "%") unary )*
//! unary   := "-" unary | postfix
//! postfix := primary ( "[" expr "]" )*
//! primary := NUMBER | STRING | "true" | "false" | "result" | "#" | FUNC "(" args? ")"
//!          | PRED "(" expr "," closure ")" | "(" expr ")"
//! closure := expr | "{" expr "}"            (`#` is the element being tested)
//! FUNC    := len | isNaN | isInf | abs | float | int          (one argument)
//!          | sum | mean | median | first | last                (a list)
//!          | min | max                   (a list, or several numbers)
//!          | now | duration                          (times, for `rangeQuery`)
//! PRED    := all | any | none | one | count | filter | map
//! ```
//!
//! `result` is the measurement: a number (a scalar query), a list of numbers (a Prometheus
//! vector, or every sample of a range query's series one after another; `result[0]` is the first
//! sample), a string or a boolean (a web metric's JSON value). Numbers compare as numbers whatever
//! their spelling (`result == 1` with `1.0`); comparisons with NaN are false, as in IEEE
//! arithmetic. The predicates and aggregates behave as expr-lang's builtins of the same names
//! (`all` of an empty list is true, `sum`, `mean` and `median` of one are 0; `min`, `max`,
//! `first` and `last` of one are an error). `now()` and `duration("5m")` (Go's duration syntax,
//! such as `1h30m`) make the times of a Prometheus `rangeQuery`: a time minus or plus a duration
//! is a time, a time minus a time is a duration.

use std::fmt;

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
    /// An instant, in seconds since the Unix epoch.
    Time(f64),
    /// A span of time, in seconds.
    Duration(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Time(t) => write!(f, "time {t}"),
            Value::Duration(d) => write!(f, "{d}s"),
            Value::List(l) => {
                write!(f, "[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Why an expression could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("index {index} out of range (the result has {len} element(s))")]
    OutOfRange { index: i64, len: usize },
    #[error("{0}")]
    Type(String),
    #[error("the condition gave {0}, not true or false")]
    NotBool(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Num(f64),
    Bool(bool),
    Str(String),
    Result,
    /// `#`: the element a predicate is testing.
    Elem,
    Call(String, Vec<Node>),
    Index(Box<Node>, Box<Node>),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// Functions of one argument.
const UNARY: &[&str] = &[
    "len", "isNaN", "isInf", "abs", "float", "int", "sum", "mean", "median", "first", "last",
    "duration",
];
/// Functions of a list or of several numbers.
const VARIADIC: &[&str] = &["min", "max"];
/// Functions of no argument.
const NULLARY: &[&str] = &["now"];
/// Functions of a list and a predicate (a closure over `#`).
const PREDICATES: &[&str] = &["all", "any", "none", "one", "count", "filter", "map"];

fn known_names() -> String {
    let mut all: Vec<&str> = vec!["result", "true", "false"];
    for set in [UNARY, VARIADIC, NULLARY, PREDICATES] {
        all.extend_from_slice(set);
    }
    all.join(", ")
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    const SYMS: [&str; 21] = [
        "||", "&&", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[",
        "]", "#", "{", "}",
    ];
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let col = i + 1;
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || ((chars[i] == '+' || chars[i] == '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            let n = s.parse::<f64>().map_err(|_| ParseError {
                column: col,
                message: format!("`{s}` is not a number"),
            })?;
            out.push((Tok::Num(n), col));
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), col));
            continue;
        }
        if c == '"' || c == '\'' {
            let q = c;
            i += 1;
            let start = i;
            while i < chars.len() && chars[i] != q {
                i += 1;
            }
            if i >= chars.len() {
                return Err(ParseError {
                    column: col,
                    message: "unterminated string".into(),
                });
            }
            out.push((Tok::Str(chars[start..i].iter().collect()), col));
            i += 1;
            continue;
        }
        if c == ',' {
            out.push((Tok::Sym(","), col));
            i += 1;
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match SYMS.iter().find(|s| rest.starts_with(**s)) {
            Some(s) => {
                out.push((Tok::Sym(s), col));
                i += s.len();
            }
            None => {
                return Err(ParseError {
                    column: col,
                    message: format!("unexpected `{c}`"),
                })
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
    /// How many predicate closures enclose the current position (`#` is valid inside one).
    closures: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map(|(_, c)| *c).unwrap_or(self.end)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.col(),
            message: message.into(),
        })
    }

    fn eat_sym(&mut self, s: &'static str) -> bool {
        if self.peek() == Some(&Tok::Sym(s)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(i)) if i == w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Node, ParseError> {
        let mut left = self.and()?;
        while self.eat_sym("||") || self.eat_word("or") {
            left = Node::Bin(Op::Or, Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        let mut left = self.not()?;
        while self.eat_sym("&&") || self.eat_word("and") {
            left = Node::Bin(Op::And, Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, ParseError> {
        if self.eat_sym("!") || self.eat_word("not") {
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Node, ParseError> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Tok::Sym("==")) => Op::Eq,
            Some(Tok::Sym("!=")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return Ok(left),
        };
        self.pos += 1;
        Ok(Node::Bin(op, Box::new(left), Box::new(self.sum()?)))
    }

    fn sum(&mut self) -> Result<Node, ParseError> {
        let mut left = self.prod()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("+")) => Op::Add,
                Some(Tok::Sym("-")) => Op::Sub,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Node::Bin(op, Box::new(left), Box::new(self.prod()?));
        }
    }

    fn prod(&mut self) -> Result<Node, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("*")) => Op::Mul,
                Some(Tok::Sym("/")) => Op::Div,
                Some(Tok::Sym("%")) => Op::Rem,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Node::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.eat_sym("-") {
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        let mut node = self.primary()?;
        while self.eat_sym("[") {
            let index = self.expr()?;
            if !self.eat_sym("]") {
                return self.err("expected `]`");
            }
            node = Node::Index(Box::new(node), Box::new(index));
        }
        Ok(node)
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return self.err("unexpected end of the condition");
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Node::Num(n)),
            Tok::Str(s) => Ok(Node::Str(s)),
            Tok::Ident(i) if i == "true" => Ok(Node::Bool(true)),
            Tok::Ident(i) if i == "false" => Ok(Node::Bool(false)),
            Tok::Ident(i) if i == "result" => Ok(Node::Result),
            Tok::Sym("#") if self.closures > 0 => Ok(Node::Elem),
            Tok::Sym("#") => {
                self.pos -= 1;
                self.err(
                    "`#` stands for an element only inside a predicate such as all(result, # < 1)",
                )
            }
            Tok::Ident(i) if PREDICATES.contains(&i.as_str()) => {
                if !self.eat_sym("(") {
                    return self.err(format!("`{i}` is a function: `{i}(list, predicate)`"));
                }
                let list = self.expr()?;
                if !self.eat_sym(",") {
                    return self.err(format!(
                        "`{i}` takes a list and a predicate: `{i}(result, # > 0)`"
                    ));
                }
                self.closures += 1;
                let braced = self.eat_sym("{");
                let body = self.expr()?;
                if braced && !self.eat_sym("}") {
                    return self.err("expected `}`");
                }
                self.closures -= 1;
                if !self.eat_sym(")") {
                    return self.err("expected `)`");
                }
                Ok(Node::Call(i, vec![list, body]))
            }
            Tok::Ident(i)
                if UNARY.contains(&i.as_str())
                    || VARIADIC.contains(&i.as_str())
                    || NULLARY.contains(&i.as_str()) =>
            {
                if !self.eat_sym("(") {
                    return self.err(format!("`{i}` is a function: `{i}(…)`"));
                }
                let mut args = Vec::new();
                if !self.eat_sym(")") {
                    args.push(self.expr()?);
                    while self.eat_sym(",") {
                        args.push(self.expr()?);
                    }
                    if !self.eat_sym(")") {
                        return self.err("expected `)`");
                    }
                }
                let wanted = if NULLARY.contains(&i.as_str()) {
                    args.is_empty()
                } else if VARIADIC.contains(&i.as_str()) {
                    !args.is_empty()
                } else {
                    args.len() == 1
                };
                if !wanted {
                    let takes = if NULLARY.contains(&i.as_str()) {
                        "no argument"
                    } else if VARIADIC.contains(&i.as_str()) {
                        "a list or numbers"
                    } else {
                        "one argument"
                    };
                    return self.err(format!("`{i}` takes {takes}"));
                }
                Ok(Node::Call(i, args))
            }
            Tok::Ident(i) => {
                self.pos -= 1;
                self.err(format!("unknown name `{i}` (known: {})", known_names()))
            }
            Tok::Sym("(") => {
                let e = self.expr()?;
                if !self.eat_sym(")") {
                    return self.err("expected `)`");
                }
                Ok(e)
            }
            Tok::Sym(s) => {
                self.pos -= 1;
                self.err(format!("unexpected `{s}`"))
            }
        }
    }
}

fn num(v: &Value, what: &str) -> Result<f64, EvalError> {
    match v {
        Value::Number(n) => Ok(*n),
        Value::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| EvalError::Type(format!("{what}: `{s}` is not a number"))),
        other => Err(EvalError::Type(format!("{what}: {other} is not a number"))),
    }
}

fn truthy(v: &Value) -> Result<bool, EvalError> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(EvalError::NotBool(other.clone())),
    }
}

fn list<'v>(v: &'v Value, what: &str) -> Result<&'v [Value], EvalError> {
    match v {
        Value::List(l) => Ok(l),
        other => Err(EvalError::Type(format!("{what}: {other} is not a list"))),
    }
}

/// The numbers of an aggregate's arguments: one list, or several numbers.
fn numbers(args: &[Value], what: &str) -> Result<Vec<f64>, EvalError> {
    match args {
        [Value::List(l)] => l.iter().map(|v| num(v, what)).collect(),
        _ => args.iter().map(|v| num(v, what)).collect(),
    }
}

/// A duration in Go's syntax (`time.ParseDuration`): a sign, then one or more decimal numbers
/// each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `300ms`, `1.5h` or `2h45m`;
/// in seconds.
pub fn go_duration(text: &str) -> Option<f64> {
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(sign * total)
}

/// What an evaluation reads: the measurement, the element a predicate is testing, and the
/// current time.
#[derive(Clone, Copy)]
struct Env<'a> {
    result: Option<&'a Value>,
    elem: Option<&'a Value>,
    now_s: f64,
}

fn call(f: &str, args: &[Node], env: Env<'_>) -> Result<Value, EvalError> {
    if PREDICATES.contains(&f) {
        let items = eval(&args[0], env)?;
        let items = list(&items, f)?;
        let mut kept = Vec::new();
        let mut hits = 0usize;
        for item in items {
            let v = eval(
                &args[1],
                Env {
                    elem: Some(item),
                    ..env
                },
            )?;
            if f == "map" {
                kept.push(v);
                continue;
            }
            let hit = truthy(&v)?;
            match f {
                "all" if !hit => return Ok(Value::Bool(false)),
                "any" if hit => return Ok(Value::Bool(true)),
                "none" if hit => return Ok(Value::Bool(false)),
                "filter" if hit => kept.push(item.clone()),
                _ => {}
            }
            hits += usize::from(hit);
        }
        return Ok(match f {
            "all" | "none" => Value::Bool(true),
            "any" => Value::Bool(false),
            "one" => Value::Bool(hits == 1),
            "count" => Value::Number(hits as f64),
            _ => Value::List(kept),
        });
    }
    if f == "now" {
        return Ok(Value::Time(env.now_s));
    }
    let a: Vec<Value> = args
        .iter()
        .map(|n| eval(n, env))
        .collect::<Result<_, _>>()?;
    let first = &a[0];
    Ok(match f {
        "len" => Value::Number(match first {
            Value::List(l) => l.len() as f64,
            Value::Str(s) => s.chars().count() as f64,
            other => return Err(EvalError::Type(format!("len({other})"))),
        }),
        "isNaN" => Value::Bool(num(first, "isNaN")?.is_nan()),
        "isInf" => Value::Bool(num(first, "isInf")?.is_infinite()),
        "abs" => Value::Number(num(first, "abs")?.abs()),
        "float" => Value::Number(num(first, "float")?),
        "int" => Value::Number(num(first, "int")?.trunc()),
        "sum" => Value::Number(numbers(&a, f)?.iter().sum()),
        "mean" => {
            let n = numbers(&a, f)?;
            Value::Number(if n.is_empty() {
                0.0
            } else {
                n.iter().sum::<f64>() / n.len() as f64
            })
        }
        "median" => {
            let mut n = numbers(&a, f)?;
            n.sort_by(f64::total_cmp);
            let k = n.len();
            Value::Number(match k {
                0 => 0.0,
                _ if k % 2 == 1 => n[k / 2],
                _ => (n[k / 2 - 1] + n[k / 2]) / 2.0,
            })
        }
        "min" | "max" => {
            let n = numbers(&a, f)?;
            let pick = if f == "min" { f64::min } else { f64::max };
            Value::Number(
                n.iter()
                    .copied()
                    .reduce(pick)
                    .ok_or_else(|| EvalError::Type(format!("{f} of an empty list")))?,
            )
        }
        "first" | "last" => {
            let l = list(first, f)?;
            let item = if f == "first" { l.first() } else { l.last() };
            item.cloned().ok_or(EvalError::OutOfRange {
                index: if f == "first" { 0 } else { -1 },
                len: 0,
            })?
        }
        _ => match first {
            // "duration"
            Value::Str(s) => Value::Duration(
                go_duration(s)
                    .ok_or_else(|| EvalError::Type(format!("duration: `{s}` is not a duration")))?,
            ),
            other => return Err(EvalError::Type(format!("duration({other})"))),
        },
    })
}

/// `a op b` where either side is a time or a duration.
fn time_arith(op: Op, a: &Value, b: &Value) -> Result<Value, EvalError> {
    let cmp = |x: f64, y: f64| {
        Value::Bool(match op {
            Op::Eq => x == y,
            Op::Ne => x != y,
            Op::Lt => x < y,
            Op::Le => x <= y,
            Op::Gt => x > y,
            _ => x >= y,
        })
    };
    let is_cmp = matches!(op, Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge);
    Ok(match (a, b) {
        (Value::Time(x), Value::Time(y)) if is_cmp => cmp(*x, *y),
        (Value::Duration(x), Value::Duration(y)) if is_cmp => cmp(*x, *y),
        (Value::Time(x), Value::Duration(d)) if op == Op::Add => Value::Time(x + d),
        (Value::Duration(d), Value::Time(x)) if op == Op::Add => Value::Time(x + d),
        (Value::Time(x), Value::Duration(d)) if op == Op::Sub => Value::Time(x - d),
        (Value::Time(x), Value::Time(y)) if op == Op::Sub => Value::Duration(x - y),
        (Value::Duration(x), Value::Duration(y)) if op == Op::Add => Value::Duration(x + y),
        (Value::Duration(x), Value::Duration(y)) if op == Op::Sub => Value::Duration(x - y),
        (Value::Duration(x), Value::Number(n)) if op == Op::Mul => Value::Duration(x * n),
        (Value::Number(n), Value::Duration(x)) if op == Op::Mul => Value::Duration(x * n),
        _ => {
            return Err(EvalError::Type(format!(
                "{op:?} of {a} and {b} is not defined"
            )))
        }
    })
}

fn eval(node: &Node, env: Env<'_>) -> Result<Value, EvalError> {
    Ok(match node {
        Node::Num(n) => Value::Number(*n),
        Node::Bool(b) => Value::Bool(*b),
        Node::Str(s) => Value::Str(s.clone()),
        Node::Result => env
            .result
            .cloned()
            .ok_or_else(|| EvalError::Type("`result` has no value here".into()))?,
        Node::Elem => env
            .elem
            .cloned()
            .ok_or_else(|| EvalError::Type("`#` outside a predicate".into()))?,
        Node::Neg(e) => match eval(e, env)? {
            Value::Duration(d) => Value::Duration(-d),
            v => Value::Number(-num(&v, "-")?),
        },
        Node::Not(e) => Value::Bool(!truthy(&eval(e, env)?)?),
        Node::Index(items, index) => {
            let l = eval(items, env)?;
            let i = num(&eval(index, env)?, "index")? as i64;
            match l {
                Value::List(items) => {
                    let len = items.len();
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| items.into_iter().nth(i))
                        .ok_or(EvalError::OutOfRange { index: i, len })?
                }
                other => return Err(EvalError::Type(format!("{other} cannot be indexed"))),
            }
        }
        Node::Call(f, args) => call(f, args, env)?,
        Node::Bin(Op::Or, l, r) => Value::Bool(truthy(&eval(l, env)?)? || truthy(&eval(r, env)?)?),
        Node::Bin(Op::And, l, r) => Value::Bool(truthy(&eval(l, env)?)? && truthy(&eval(r, env)?)?),
        Node::Bin(op, l, r) => {
            let (a, b) = (eval(l, env)?, eval(r, env)?);
            if matches!(a, Value::Time(_) | Value::Duration(_))
                || matches!(b, Value::Time(_) | Value::Duration(_))
            {
                return time_arith(*op, &a, &b);
            }
            match op {
                Op::Eq | Op::Ne => {
                    let eq = match (&a, &b) {
                        (Value::Str(x), Value::Str(y)) => x == y,
                        (Value::Bool(x), Value::Bool(y)) => x == y,
                        _ => num(&a, "==")? == num(&b, "==")?,
                    };
                    Value::Bool(if *op == Op::Eq { eq } else { !eq })
                }
                Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                    let (x, y) = (num(&a, "comparison")?, num(&b, "comparison")?);
                    Value::Bool(match op {
                        Op::Lt => x < y,
                        Op::Le => x <= y,
                        Op::Gt => x > y,
                        _ => x >= y,
                    })
                }
                _ => {
                    let (x, y) = (num(&a, "arithmetic")?, num(&b, "arithmetic")?);
                    Value::Number(match op {
                        Op::Add => x + y,
                        Op::Sub => x - y,
                        Op::Mul => x * y,
                        Op::Div => x / y,
                        _ => x % y,
                    })
                }
            }
        }
    })
}

/// The current time, in seconds since the Unix epoch.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn mentions(node: &Node, f: &str) -> bool {
    match node {
        Node::Call(name, args) => name == f || args.iter().any(|a| mentions(a, f)),
        Node::Index(a, b) | Node::Bin(_, a, b) => mentions(a, f) || mentions(b, f),
        Node::Neg(a) | Node::Not(a) => mentions(a, f),
        _ => false,
    }
}

impl Condition {
    /// Parse a condition.
    pub fn parse(text: &str) -> Result<Condition, ParseError> {
        let toks = lex(text)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: text.chars().count() + 1,
            closures: 0,
        };
        let root = p.expr()?;
        if p.pos != p.toks.len() {
            return p.err("unexpected text after the condition");
        }
        Ok(Condition {
            source: text.to_string(),
            root,
        })
    }

    /// Evaluate against a measurement; the condition must give true or false.
    pub fn evaluate(&self, result: &Value) -> Result<bool, EvalError> {
        truthy(&eval(
            &self.root,
            Env {
                result: Some(result),
                elem: None,
                now_s: now_s(),
            },
        )?)
    }

    /// Evaluate as a time (a `rangeQuery`'s `start` or `end`, such as `now() - duration("5m")`),
    /// with `now()` being `now_s` (seconds since the Unix epoch).
    pub fn evaluate_time(&self, now_s: f64) -> Result<f64, EvalError> {
        match eval(
            &self.root,
            Env {
                result: None,
                elem: None,
                now_s,
            },
        )? {
            Value::Time(t) => Ok(t),
            other => Err(EvalError::Type(format!("{other} is not a time"))),
        }
    }

    /// Whether the condition itself decides what an empty result or NaN means (it calls `len`
    /// or `isNaN`); otherwise such a measurement is inconclusive.
    pub fn handles_missing(&self) -> bool {
        mentions(&self.root, "len") || mentions(&self.root, "isNaN")
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_str(cond: &str, result: Value) -> Result<bool, EvalError> {
        Condition::parse(cond)
            .unwrap_or_else(|e| panic!("{cond}: {e}"))
            .evaluate(&result)
    }

    #[test]
    fn the_conditions_argo_users_write() {
        let v = Value::List(vec![Value::Number(0.97)]);
        assert!(eval_str("result[0] >= 0.95", v.clone()).unwrap());
        assert!(!eval_str("result[0] < 0.95", v.clone()).unwrap());
        assert!(eval_str("result >= 0.95", Value::Number(0.96)).unwrap());
        assert!(eval_str("len(result) == 0", Value::List(vec![])).unwrap());
        assert!(eval_str(
            "isNaN(result[0])",
            Value::List(vec![Value::Number(f64::NAN)])
        )
        .unwrap());
        assert!(eval_str("len(result) == 0 || result[0] >= 0.95", Value::List(vec![])).unwrap());
        assert!(eval_str("!(result[0] < 0.95) && result[0] <= 1", v.clone()).unwrap());
        assert!(eval_str("result[0] * 100 - 2 >= 94 and not false", v).unwrap());
        assert!(
            eval_str("result == 1", Value::Number(1.0)).unwrap(),
            "numbers compare as numbers"
        );
        assert!(eval_str("result == 'ok'", Value::Str("ok".into())).unwrap());
        assert!(eval_str("result == true", Value::Bool(true)).unwrap());
        assert!(
            eval_str("result > 2", Value::Str("3".into())).unwrap(),
            "JSON strings holding numbers"
        );
        assert!(eval_str("-result < 0", Value::Number(1.0)).unwrap());
        assert!(eval_str(
            "result % 2 == 1 && abs(-2) == 2 && int(2.7) == 2",
            Value::Number(3.0)
        )
        .unwrap());
    }

    #[test]
    fn nan_compares_false_and_empty_results_are_out_of_range() {
        let nan = Value::List(vec![Value::Number(f64::NAN)]);
        assert!(!eval_str("result[0] >= 0.95", nan.clone()).unwrap());
        assert!(!eval_str("result[0] < 0.95", nan).unwrap());
        assert_eq!(
            eval_str("result[0] >= 0.95", Value::List(vec![])),
            Err(EvalError::OutOfRange { index: 0, len: 0 })
        );
        assert!(Condition::parse("len(result) == 0 || result[0] > 1")
            .unwrap()
            .handles_missing());
        assert!(!Condition::parse("result[0] > 1").unwrap().handles_missing());
    }

    #[test]
    fn predicates_and_aggregates_follow_expr_lang() {
        let l = |xs: &[f64]| Value::List(xs.iter().map(|x| Value::Number(*x)).collect());
        let lat = l(&[120.0, 900.0, 400.0]);
        // The corpus' range-query template, and the braced closure form.
        assert!(eval_str("all(result, # < 1000)", lat.clone()).unwrap());
        assert!(!eval_str("all(result, {# < 500})", lat.clone()).unwrap());
        assert!(eval_str("any(result, # > 800)", lat.clone()).unwrap());
        assert!(!eval_str("none(result, # > 800)", lat.clone()).unwrap());
        assert!(eval_str("one(result, # > 800)", lat.clone()).unwrap());
        assert!(!eval_str("one(result, # > 100)", lat.clone()).unwrap());
        assert!(eval_str("count(result, # >= 400) == 2", lat.clone()).unwrap());
        assert!(eval_str("len(filter(result, # < 500)) == 2", lat.clone()).unwrap());
        assert!(eval_str("map(result, # / 1000)[1] == 0.9", lat.clone()).unwrap());
        assert!(eval_str("sum(result) == 1420 && max(result) == 900", lat.clone()).unwrap());
        assert!(eval_str("min(result) == 120 && min(3, 2, 5) == 2", lat.clone()).unwrap());
        assert!(eval_str("median(result) == 400", lat.clone()).unwrap());
        assert!(eval_str("mean(result) > 473 && mean(result) < 474", lat.clone()).unwrap());
        assert!(eval_str("first(result) == 120 && last(result) == 400", lat).unwrap());
        // Over an empty list, as expr-lang: vacuous truths, zero sums, errors for min and first.
        let empty = l(&[]);
        assert!(eval_str("all(result, # < 1) && none(result, # < 1)", empty.clone()).unwrap());
        assert!(!eval_str("any(result, # < 1) || one(result, # < 1)", empty.clone()).unwrap());
        assert!(eval_str("sum(result) == 0 && mean(result) == 0", empty.clone()).unwrap());
        assert!(eval_str("min(result) < 1", empty.clone()).is_err());
        assert!(matches!(
            eval_str("first(result) < 1", empty),
            Err(EvalError::OutOfRange { .. })
        ));
        // Nested predicates: `#` is the innermost element.
        let nested = Value::List(vec![l(&[1.0, 2.0]), l(&[3.0])]);
        assert!(eval_str("all(result, any(#, # > 0))", nested).unwrap());
    }

    #[test]
    fn range_query_times_are_now_and_durations() {
        let now = 1_700_000_000.0;
        let t = |text: &str| Condition::parse(text).unwrap().evaluate_time(now);
        assert_eq!(t("now()").unwrap(), now);
        assert_eq!(t(r#"now() - duration("5m")"#).unwrap(), now - 300.0);
        assert_eq!(
            t(r#"now() + duration("1h30m") - duration('90s')"#).unwrap(),
            now + 5310.0
        );
        assert_eq!(t(r#"duration("2s") + now()"#).unwrap(), now + 2.0);
        assert!(t(r#"duration("5m")"#).is_err(), "a duration is not a time");
        assert!(t("now() - 5").is_err(), "a time minus a number");
        assert!(t("result").is_err(), "no measurement in a time");
        assert!(t(r#"now() - duration("5 min")"#).is_err());
        for (text, secs) in [
            ("300ms", 0.3),
            ("1.5h", 5400.0),
            ("2h45m", 9900.0),
            ("-1m", -60.0),
            ("0", 0.0),
            ("1m30s", 90.0),
        ] {
            assert_eq!(go_duration(text), Some(secs), "{text}");
        }
        for bad in ["", "5", "1d", "m", "1.2.3s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_conditions_are_refused_with_a_column() {
        for (text, needle) in [
            ("result[0] >= ", "end of the condition"),
            ("result[0 >= 1", "expected `]`"),
            ("foo > 1", "unknown name `foo`"),
            ("len result", "is a function"),
            ("result >= 0.95 0.9", "unexpected text"),
            ("result @ 1", "unexpected `@`"),
            ("'open", "unterminated"),
            ("# > 1", "only inside a predicate"),
            ("all(result)", "a list and a predicate"),
            ("all(result, {# > 1)", "expected `}`"),
            ("now(1) > 0", "takes no argument"),
            ("sum(result, 2) > 0", "takes one argument"),
            ("max() > 0", "takes a list or numbers"),
        ] {
            let e = Condition::parse(text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
        assert!(matches!(
            eval_str("result + 1", Value::Number(1.0)),
            Err(EvalError::NotBool(_))
        ));
    }
}
