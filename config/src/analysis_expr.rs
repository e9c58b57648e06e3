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
//! primary := NUMBER | STRING | "true" | "false" | "result" | FUNC "(" expr ("," expr)* ")"
//!          | "(" expr ")"
//! FUNC    := len | isNaN | isInf | abs | float | int
//! ```
//!
//! `result` is the measurement: a number (a scalar query), a list of numbers (a Prometheus
//! vector; `result[0]` is its first sample), a string or a boolean (a web metric's JSON value).
//! Numbers compare as numbers whatever their spelling (`result == 1` with `1.0`); comparisons with
//! NaN are false, as in IEEE arithmetic.

use std::fmt;

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s:?}"),
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

const FUNCTIONS: &[&str] = &["len", "isNaN", "isInf", "abs", "float", "int"];

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
    const SYMS: [&str; 18] = [
        "||", "&&", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[",
        "]",
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
            Tok::Ident(i) if FUNCTIONS.contains(&i.as_str()) => {
                if !self.eat_sym("(") {
                    return self.err(format!("`{i}` is a function: `{i}(…)`"));
                }
                let mut args = vec![self.expr()?];
                while self.eat_sym(",") {
                    args.push(self.expr()?);
                }
                if !self.eat_sym(")") {
                    return self.err("expected `)`");
                }
                if args.len() != 1 {
                    return self.err(format!("`{i}` takes one argument"));
                }
                Ok(Node::Call(i, args))
            }
            Tok::Ident(i) => {
                self.pos -= 1;
                self.err(format!(
                    "unknown name `{i}` (known: result, true, false, {})",
                    FUNCTIONS.join(", ")
                ))
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

fn eval(node: &Node, result: &Value) -> Result<Value, EvalError> {
    Ok(match node {
        Node::Num(n) => Value::Number(*n),
        Node::Bool(b) => Value::Bool(*b),
        Node::Str(s) => Value::Str(s.clone()),
        Node::Result => result.clone(),
        Node::Neg(e) => Value::Number(-num(&eval(e, result)?, "-")?),
        Node::Not(e) => Value::Bool(!truthy(&eval(e, result)?)?),
        Node::Index(list, index) => {
            let l = eval(list, result)?;
            let i = num(&eval(index, result)?, "index")? as i64;
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
        Node::Call(f, args) => {
            let a = eval(&args[0], result)?;
            match f.as_str() {
                "len" => Value::Number(match &a {
                    Value::List(l) => l.len() as f64,
                    Value::Str(s) => s.chars().count() as f64,
                    other => return Err(EvalError::Type(format!("len({other})"))),
                }),
                "isNaN" => Value::Bool(num(&a, "isNaN")?.is_nan()),
                "isInf" => Value::Bool(num(&a, "isInf")?.is_infinite()),
                "abs" => Value::Number(num(&a, "abs")?.abs()),
                "float" => Value::Number(num(&a, "float")?),
                _ => Value::Number(num(&a, "int")?.trunc()),
            }
        }
        Node::Bin(Op::Or, l, r) => {
            Value::Bool(truthy(&eval(l, result)?)? || truthy(&eval(r, result)?)?)
        }
        Node::Bin(Op::And, l, r) => {
            Value::Bool(truthy(&eval(l, result)?)? && truthy(&eval(r, result)?)?)
        }
        Node::Bin(op, l, r) => {
            let (a, b) = (eval(l, result)?, eval(r, result)?);
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
        truthy(&eval(&self.root, result)?)
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
    fn bad_conditions_are_refused_with_a_column() {
        for (text, needle) in [
            ("result[0] >= ", "end of the condition"),
            ("result[0 >= 1", "expected `]`"),
            ("foo > 1", "unknown name `foo`"),
            ("len result", "is a function"),
            ("result >= 0.95 0.9", "unexpected text"),
            ("result @ 1", "unexpected `@`"),
            ("'open", "unterminated"),
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
